"""Only what pyproject.toml cannot say: the folders outside the packages that a wheel carries as data.

k8s/ (`fleet deploy --target eks`), ecs/ (`--target ecs`) and the pack runtime (triton/backends/, copied
into every pack) are installed under <prefix>/share/triton-fleet/ with their layout kept; fleet/resources.py
finds them there. Walked at build time, so a new file or folder in these trees needs no change here.
"""
from pathlib import Path

from setuptools import setup

TREES = ("k8s", "ecs", "triton/backends")


def data_files() -> list[tuple[str, list[str]]]:
    entries: dict[str, list[str]] = {}
    for tree in TREES:
        for path in sorted(Path(tree).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                entries.setdefault((Path("share/triton-fleet") / path.parent).as_posix(), []).append(path.as_posix())
    return sorted(entries.items())


setup(data_files=data_files())
