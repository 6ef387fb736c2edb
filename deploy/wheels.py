"""Download, natively, the wheels an image's Dockerfile installs, for an architecture emulated here.

Why: pip inside an arm64 build runs under qemu, and its downloads (TLS, hashing: emulated) crawl at a few
MB/s; the arm64 torch step alone fetches ~2.7 GB (PyPI's aarch64 torch is a CUDA build) and was still
downloading after 20 minutes. The host's own pip fetches the same files with `--platform` in about half
a minute. The folder goes into the build as one more find-links folder with the index off
(PIP_NO_INDEX=1: pip would otherwise take an index's copy of a file over the local one), so the build
installs exactly what the prefetch resolved; where the prefetch fails the build downloads as before.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "triton-fleet"
# Debian bookworm's glibc is 2.36 and its Python 3.11: every manylinux tag it can run.
GLIBC_MINOR = 36
PYTHON = "3.11"
UNAME = {"amd64": "x86_64", "arm64": "aarch64"}


def platform_tags(arch: str) -> list[str]:
    machine = UNAME[arch]
    return [f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MINOR, 16, -1)] + [f"manylinux2014_{machine}"]


def _args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", text, re.MULTILINE))


def dockerfile_requirements(dockerfile: Path) -> list[str]:
    """The requirements a Dockerfile pip-installs: quoted arguments of `pip install`, with ARG defaults
    filled in, and pyproject's dependencies where the Dockerfile installs those."""
    text = dockerfile.read_text().replace("\\\n", " ")
    defaults = _args(text)
    requirements: list[str] = []
    for match in re.finditer(r"pip install ((?:\"[^\"]+\"\s*)+)", text):
        for requirement in re.findall(r"\"([^\"]+)\"", match.group(1)):
            requirements.append(re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), requirement))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    if "['dependencies']" in text and "tomllib" in text:  # the Dockerfile reads pyproject's dependencies
        requirements += project["project"]["dependencies"]
    for extra in re.findall(r"\['optional-dependencies'\]\['([\w-]+)'\]", text):
        requirements += project["project"]["optional-dependencies"][extra]
    if "pip install --no-deps /opt/triton-fleet" in text:  # builds the project: its build backend
        requirements += project["build-system"]["requires"]
    return [r for r in requirements if "$" not in r]


def folder(arch: str) -> Path:
    return CACHE / f"wheels-linux-{arch}"


def prefetch(dockerfile: Path, arch: str, extra_index: str = "", log=print) -> Path | None:
    """Download the Dockerfile's requirements (and their dependencies) for `arch` into folder(arch).

    Returns the folder, or None (with the reason logged) when pip could not resolve them for that
    platform: the build then downloads under emulation, slower but the same.
    """
    requirements = dockerfile_requirements(dockerfile)
    if not requirements:
        return None
    dest = folder(arch)
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest), "--only-binary=:all:",
               "--python-version", PYTHON, "--implementation", "cp", "--find-links", str(dest)]
    for tag in platform_tags(arch):
        command += ["--platform", tag]
    if extra_index:
        command += ["--extra-index-url", extra_index]
    done = subprocess.run([*command, *requirements], capture_output=True, text=True)
    if done.returncode != 0:
        log(f"    prefetching {arch} wheels for {dockerfile.name} failed; pip in the build downloads them: "
            f"{(done.stdout + done.stderr).strip()[-600:]}")
        return None
    return dest
