"""Keeps the checkout's root off sys.path, where its `triton/` folder would shadow OpenAI's `triton`.

Python started in the repository root (`python -m benchmarks.data_plane`, a script, a notebook) puts the
root on sys.path unless PYTHONSAFEPATH is set. The root's `triton/` folder (what runs inside Triton
Inference Server: the pack runtime, the server images) then imports as a namespace package `triton`, which
torch takes for OpenAI Triton: `torch.export.load` and torch._dynamo fail with "module 'triton' has no
attribute 'language'". The folder is the project's layout and stays.

Every package of the project calls `keep_checkout_root_off_path()` first thing in its `__init__`, so any
`python -m <package>.<module>` started in the root is safe: the root leaves sys.path (the installed
project, `make install`, still finds every package), and a `triton` imported from the folder is forgotten.
Where that cannot work (the project is not installed, so the root is the only way to its packages), it
fails at once with what to do instead of letting torch fail later. A notebook or script that imports torch
before any project package is not covered: import a project package first, or set PYTHONSAFEPATH=1.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fleet", "model_repository", "control_plane", "loadtest", "benchmarks", "adfilter", "deploy")


class CheckoutOnPath(ImportError):
    """The checkout's root is on sys.path and cannot be taken off; the message says what to do."""


def _is_root(entry: str) -> bool:
    try:
        return Path(entry or os.getcwd()).resolve() == ROOT
    except OSError:
        return False


def _shadowing() -> bool:
    """Whether this is a checkout whose triton/ folder could be imported as a package."""
    folder = ROOT / "triton"
    return folder.is_dir() and not (folder / "__init__.py").exists()


def _installed_without(path: list[str]) -> bool:
    """Whether the project's packages are found without the root (the editable install's finder)."""
    saved = sys.path[:]
    sys.path[:] = path
    try:
        for name in PACKAGES:
            if name in sys.modules:
                continue
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None:
                return False
        return True
    finally:
        sys.path[:] = saved


def keep_checkout_root_off_path() -> None:
    if not _shadowing() or not any(_is_root(entry) for entry in sys.path):
        return
    without = [entry for entry in sys.path if not _is_root(entry)]
    if not _installed_without(without):
        raise CheckoutOnPath(
            f"Python put the repository root ({ROOT}) on sys.path, and this checkout's triton/ folder would "
            "then shadow OpenAI's `triton` package (torch fails with \"module 'triton' has no attribute "
            "'language'\"). Install the project (`make install`) and run with `.venv/bin/python`, or set "
            "PYTHONSAFEPATH=1 as the Makefile does.")
    sys.path[:] = without
    shadow = sys.modules.get("triton")
    if shadow is not None and any(Path(p).resolve() == ROOT / "triton" for p in getattr(shadow, "__path__", [])):
        del sys.modules["triton"]
