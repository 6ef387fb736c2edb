"""Build the images that can be built here: one base, then the CPU server, control-plane and loadtest images.

    python -m deploy.images              # base (debootstrap'd bookworm, once) + every image; `make images`
    python -m deploy.images server-cpu   # one image (and what it builds on)
    python -m deploy.images --arch arm64 # Graviton images under emulation; `make images ARCH=arm64`

Why a base from debootstrap: no registry image can be pulled here, and Debian's mirror can. The base
layer (torch) changes least and is shared by every image, so a rerun after a code change rebuilds only the
small top layers. The GPU (NGC) and inf2 (Neuron) images need bases that cannot be pulled here; their
facts are checked by tests/containers/test_image_facts.py instead.

Architectures: images for this machine's own architecture keep the plain tag (`...:0.1.0`); images for
another one (Graviton's arm64 on an x86 machine) are built under qemu-user emulation
(deploy.podman.ensure_emulation) from their own debootstrap'd base and tagged `...:0.1.0-arm64`, so both
sets live side by side and each keeps its own layer cache.
"""
from __future__ import annotations

import argparse
import configparser
import glob
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy import wheels
from deploy.podman import (
    ULIMITS,
    base_command,
    emulation_volumes,
    ensure_emulation,
    ensure_tools,
    host_arch,
    image_exists,
    podman,
)

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_IMAGE = "localhost/debian:bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# OCI architecture name -> `uname -m` (and the platform tag of its wheels).
ARCHES = wheels.UNAME
# PyTorch's own index of CPU-only builds. PyPI's Linux aarch64 torch 2.13.0 is a CUDA 13 build whose
# dependencies are ~3 GB of CUDA libraries (a Graviton node never uses them); this index has torch
# 2.13.0+cpu for both architectures. Dockerfile.base adds it unless a local wheel covers torch.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHES)}")
    return arch


def tag_suffix(arch: str | None) -> str:
    """'' for this machine's own architecture, '-arm64' (etc.) for another one."""
    return "" if arch in (None, host_arch()) else f"-{check_arch(arch)}"


@dataclass(frozen=True)
class ImageSpec:
    name: str
    dockerfile: str
    base: str  # the spec it builds FROM, or "debian"

    def tag_for(self, arch: str | None = None) -> str:
        return f"localhost/triton-fleet/{self.name}:{version()}{tag_suffix(arch)}"

    @property
    def tag(self) -> str:
        """The tag of this machine's own architecture (what the pods and tasks run)."""
        return self.tag_for()


SPECS = {spec.name: spec for spec in (
    ImageSpec("base", "triton/docker/Dockerfile.base", "debian"),
    ImageSpec("server-cpu", "triton/docker/Dockerfile.cpu", "base"),
    ImageSpec("control-plane", "control_plane/Dockerfile", "base"),
    ImageSpec("loadtest", "loadtest/Dockerfile", "base"),
)}


def local_package_sources() -> tuple[list[str], list[str], list[str]]:
    """(find-links dirs, extra index URLs, volumes) from this machine's pip config: local wheels only.

    Mounted at the same paths, so the file:// URLs of a local simple index stay valid inside the build.
    """
    parser = configparser.ConfigParser()
    for path in ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", str(Path.home() / ".config/pip/pip.conf")):
        parser.read(path)
    links, indexes, volumes = [], [], []
    for value in parser.get("global", "find-links", fallback="").split():
        if Path(value).is_dir():
            links.append(value)
            volumes.append(f"{value}:{value}:ro")
    for value in parser.get("global", "extra-index-url", fallback="").split():
        if value.startswith("file://") and Path(value[7:]).is_dir():
            indexes.append(value)
            top = Path(value[7:]).parent
            volumes.append(f"{top}:{top}:ro")
    return links, indexes, volumes


def debian_image(arch: str | None = None) -> str:
    return f"{DEBIAN_IMAGE}{tag_suffix(arch)}"


def build_debian_base(force: bool = False, arch: str | None = None) -> str:
    """localhost/debian:bookworm[-arch] from debootstrap, once per machine and architecture.

    ~1 min natively; a foreign architecture runs debootstrap's second stage (dpkg, maintainer scripts)
    under emulation, several times slower. `podman import --arch` records the architecture, without which
    `podman build --platform` would not accept the image as a base.
    """
    arch = check_arch(arch or host_arch())
    image = debian_image(arch)
    if image_exists(image) and not force:
        return image
    with tempfile.TemporaryDirectory(prefix="bookworm-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        done = subprocess.run(["debootstrap", "--variant=minbase", f"--arch={arch}", "bookworm", str(rootfs)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap --arch={arch} failed ({done.returncode}): "
                               f"{(done.stdout + done.stderr)[-2000:]}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([*base_command(), "import", "--arch", arch, "-", image], stdin=tar.stdout, check=True,
                       capture_output=True)
        tar.wait()
    return image


def has_local_torch(arch: str, links: list[str], torch_version: str = "2.13.0") -> bool:
    """A torch wheel for `arch` in the local find-links folders (then the build needs no torch index)."""
    return any(glob.glob(f"{link}/torch-{torch_version}*_{ARCHES[arch]}.whl") for link in links)


def reachable(url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return True
    except (urllib.error.URLError, OSError):
        return False


def torch_index(arch: str, links: list[str], log=print) -> str:
    """The TORCH_INDEX_URL build argument: PyTorch's CPU index, or '' where that index is out of reach.

    Why not always the index: pip asks every index for every package and retries one it cannot reach, so
    an unreachable index costs seconds per package (minutes under emulation). Without it an arm64 build
    takes PyPI's aarch64 torch, a CUDA build: it works on CPU, but brings ~3 GB of CUDA libraries.
    """
    if has_local_torch(arch, links) or reachable(f"{TORCH_CPU_INDEX}/torch/"):
        return TORCH_CPU_INDEX
    if arch == "arm64":
        log(f"    {TORCH_CPU_INDEX} is out of reach: the arm64 base takes PyPI's aarch64 torch, a CUDA build "
            "(~3 GB of CUDA libraries the image does not need; on a machine that reaches the index it is "
            "the CPU build)")
    return ""


def build(name: str, log=print, arch: str | None = None) -> str:
    """Build one image (and, first, what it builds on) for `arch` (default: this machine's). Returns its tag."""
    arch = check_arch(arch or host_arch())
    spec = SPECS[name]
    if arch != host_arch():
        ensure_emulation(arch)
    base = build_debian_base(arch=arch) if spec.base == "debian" else build(spec.base, log, arch)
    links, indexes, volumes = local_package_sources()
    tag = spec.tag_for(arch)
    index = torch_index(arch, links, log) if spec.base == "debian" else ""
    args = ["build", "--network", "host", *ULIMITS, "-t", tag, "-f", str(ROOT / spec.dockerfile),
            "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"TARGETARCH={arch}"]
    if arch != host_arch():
        # pip prefers an index's copy of a file to the same file in a find-links folder, so the prefetched
        # wheels are used only with the index off; the prefetch resolved the same requirements.
        fetched = wheels.prefetch(ROOT / spec.dockerfile, arch, index, log)
        if fetched is not None:
            links.append(str(fetched))
            volumes.append(f"{fetched}:{fetched}:ro")
            args += ["--build-arg", "PIP_NO_INDEX=1"]
    args += ["--build-arg", f"PIP_FIND_LINKS={' '.join(links)}",
             "--build-arg", f"PIP_EXTRA_INDEX_URL={' '.join(indexes)}"]
    if spec.base == "debian":
        args += ["--build-arg", f"TORCH_INDEX_URL={index}"]
    if arch != host_arch():
        args += ["--platform", f"linux/{arch}", *emulation_volumes(arch)]
    for volume in volumes:
        args += ["--volume", volume]
    if HOST_CA.exists():
        args += ["--volume", f"{HOST_CA}:/host-ca.crt:ro"]
    started = time.monotonic()
    podman(*args, str(ROOT))
    # Earlier builds of this tag become untagged images (GBs each over many runs); the layers the new
    # image and the build cache use stay.
    podman("image", "prune", "--force", check=False)
    log(f"built {tag} in {time.monotonic() - started:.0f}s")
    return tag


def build_all(log=print, arch: str | None = None) -> list[str]:
    return [build(name, log, arch) for name in SPECS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", choices=[*SPECS, []], help="default: all")
    parser.add_argument("--arch", choices=list(ARCHES), default=host_arch(),
                        help=f"target architecture (default: this machine's, {host_arch()}); another one "
                             "is built under qemu emulation and tagged <version>-<arch>")
    options = parser.parse_args(argv)
    ensure_tools()
    started = time.monotonic()
    for name in options.images or list(SPECS):
        build(name, arch=options.arch)
    print(f"images ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
