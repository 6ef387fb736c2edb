"""Which optional part of the install a command needs, and a clear error when it is missing.

Why: the default install is the workstation's (the CLI, `fleet.client`, `fleet deploy`, `fleet report`, the
load-test drivers) and runs on any OS with Python 3.11-3.12. torch (several hundred MB, the artifacts' own
version) and tritonserver (the `nvidia-pytriton` wheel: Linux with glibc >= 2.35 only) come with the extras
`triton-fleet[torch]` and `triton-fleet[server]` (pyproject.toml). A command that needs one says which to
install instead of failing with a traceback deep inside an import.
"""
from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from typing import TypeVar

import click

# importable module -> (the extra that brings it, what it is)
MODULE_EXTRAS: dict[str, tuple[str, str]] = {
    "torch": ("torch", "torch"),
    "pytriton": ("server", "tritonserver (the nvidia-pytriton wheel)"),
}
# What each extra must make importable.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "server": ("torch", "pytriton"),
}

F = TypeVar("F", bound=Callable[..., object])


class MissingExtra(click.ClickException):
    """A command needs a part of the install that this environment leaves out."""


def install_hint(extra: str) -> str:
    return (f"install triton-fleet[{extra}] (pip install 'triton-fleet[{extra}]', or in a checkout "
            f"`pip install -e '.[{extra}]'`; `make install` installs everything)")


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    return [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, command: str) -> None:
    """Raise MissingExtra naming what `command` needs and how to install it, if anything is missing."""
    missing = missing_modules(extra)
    if missing:
        what = " and ".join(MODULE_EXTRAS[name][1] for name in missing)
        raise MissingExtra(f"`{command}` needs {what}, which this install leaves out: {install_hint(extra)}")


def needs_extra(extra: str) -> Callable[[F], F]:
    """Decorate a click callback: it checks `extra` when the command runs (never for --help)."""

    def decorate(callback: F) -> F:
        @functools.wraps(callback)
        def checked(*args, **kwargs):
            require(extra, click.get_current_context().command_path)
            return callback(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return decorate


def explain_missing_module(error: ModuleNotFoundError, command: str) -> MissingExtra | None:
    """A MissingExtra for an import of an optional module that failed inside `command`, else None.

    The safety net for commands without `needs_extra`: only a module an extra brings, and only when it is
    really absent (a broken install of it keeps its own traceback).
    """
    top = (error.name or "").split(".")[0]
    if top not in MODULE_EXTRAS or importlib.util.find_spec(top) is not None:
        return None
    extra, what = MODULE_EXTRAS[top]
    return MissingExtra(f"`{command}` needs {what}, which this install leaves out: {install_hint(extra)}")
