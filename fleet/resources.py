"""Files of the project that live outside its Python packages: k8s/, ecs/ and the pack runtime.

Why: a checkout (and an editable install) reads them in place, but a wheel install (`pip install
triton-fleet` on a workstation, the images) has no such folders beside its packages. setup.py puts these
trees into the wheel as data under <prefix>/share/triton-fleet/, found here through the distribution's own
file list, so `fleet deploy`, `fleet pack` and the control plane work the same from either.
"""
from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
DATA_PARTS = ("share", "triton-fleet")


@functools.cache
def _installed_root() -> Path | None:
    """<prefix>/share/triton-fleet of the installed distribution, if it carries the data trees."""
    try:
        files = importlib.metadata.distribution("triton-fleet").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        parts = file.parts
        for i in range(len(parts) - 1):
            if parts[i:i + 2] == DATA_PARTS:
                return Path(file.locate()).resolve().parents[len(parts) - i - 3]
    return None


def project_path(relative: str) -> Path:
    """`relative` (e.g. "k8s", "triton/backends/pack/model.py") in the checkout, else in the installed data.

    When neither has it, the checkout path comes back, so the caller's own "missing" message names it.
    """
    checkout = CHECKOUT / relative
    if checkout.exists():
        return checkout
    root = _installed_root()
    if root is not None and (root / relative).exists():
        return root / relative
    return checkout
