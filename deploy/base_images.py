"""Documented facts of the base images that cannot be pulled here (NGC), and reading a Dockerfile's pins.

Source: Triton's issue tracker (#5895, #8262) and NGC release notes, as recorded in /work/shared/NOTES.md:
23.05-24.12 are Ubuntu 22.04 with Python 3.10; 25.02 and later Ubuntu 24.04 with Python 3.12; none 3.11.
"""
from __future__ import annotations

import re
from pathlib import Path


def ngc_python(tag: str) -> tuple[int, int]:
    """Python of nvcr.io/nvidia/tritonserver:<tag> (YY.MM-...), from the documented ranges."""
    match = re.match(r"(\d{2})\.(\d{2})", tag)
    if not match:
        raise ValueError(f"not an NGC YY.MM tag: {tag}")
    release = (int(match.group(1)), int(match.group(2)))
    if (23, 5) <= release <= (24, 12):
        return (3, 10)
    if release >= (25, 2):
        return (3, 12)
    raise ValueError(f"no documented Python for NGC {tag}")


def dockerfile_arg(dockerfile: Path, name: str) -> str:
    """The default of `ARG name=...` in a Dockerfile."""
    match = re.search(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.MULTILINE)
    if not match:
        raise KeyError(f"{dockerfile} declares no ARG {name} with a default")
    return match.group(1)
