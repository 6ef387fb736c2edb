"""Build the images that can be built here: one base, then the CPU server, control-plane and loadtest images.

    python -m deploy.images            # base (debootstrap'd bookworm, once) + every image; `make images`
    python -m deploy.images server-cpu # one image (and what it builds on)

Why a base from debootstrap: no registry image can be pulled here, and Debian's mirror can. The base
layer (torch) changes least and is shared by every image, so a rerun after a code change rebuilds only the
small top layers. The GPU (NGC) and inf2 (Neuron) images need bases that cannot be pulled here; their
facts are checked by tests/containers/test_image_facts.py instead.
"""
from __future__ import annotations

import argparse
import configparser
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from deploy.podman import ULIMITS, base_command, ensure_tools, image_exists, podman

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_IMAGE = "localhost/debian:bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@dataclass(frozen=True)
class ImageSpec:
    name: str
    dockerfile: str
    base: str  # the spec it builds FROM, or "debian"

    @property
    def tag(self) -> str:
        return f"localhost/triton-fleet/{self.name}:{version()}"


SPECS = {spec.name: spec for spec in (
    ImageSpec("base", "triton/docker/Dockerfile.base", "debian"),
    ImageSpec("server-cpu", "triton/docker/Dockerfile.cpu", "base"),
    ImageSpec("control-plane", "control_plane/Dockerfile", "base"),
    ImageSpec("loadtest", "loadtest/Dockerfile", "base"),
)}


def _target_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


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


def build_debian_base(force: bool = False) -> str:
    """localhost/debian:bookworm from debootstrap (~1 min), once per machine."""
    if image_exists(DEBIAN_IMAGE) and not force:
        return DEBIAN_IMAGE
    with tempfile.TemporaryDirectory(prefix="bookworm-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs)], check=True,
                       capture_output=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([*base_command(), "import", "-", DEBIAN_IMAGE], stdin=tar.stdout, check=True,
                       capture_output=True)
        tar.wait()
    return DEBIAN_IMAGE


def build(name: str, log=print) -> str:
    """Build one image (and, first, what it builds on). Returns its tag."""
    spec = SPECS[name]
    base = build_debian_base() if spec.base == "debian" else build(spec.base, log)
    links, indexes, volumes = local_package_sources()
    args = ["build", "--network", "host", *ULIMITS, "-t", spec.tag, "-f", str(ROOT / spec.dockerfile),
            "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"TARGETARCH={_target_arch()}",
            "--build-arg", f"PIP_FIND_LINKS={' '.join(links)}",
            "--build-arg", f"PIP_EXTRA_INDEX_URL={' '.join(indexes)}"]
    for volume in volumes:
        args += ["--volume", volume]
    if HOST_CA.exists():
        args += ["--volume", f"{HOST_CA}:/host-ca.crt:ro"]
    started = time.monotonic()
    podman(*args, str(ROOT))
    # Earlier builds of this tag become untagged images (GBs each over many runs); the layers the new
    # image and the build cache use stay.
    podman("image", "prune", "--force", check=False)
    log(f"built {spec.tag} in {time.monotonic() - started:.0f}s")
    return spec.tag


def build_all(log=print) -> list[str]:
    return [build(name, log) for name in SPECS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", choices=[*SPECS, []], help="default: all")
    options = parser.parse_args(argv)
    ensure_tools()
    started = time.monotonic()
    for name in options.images or list(SPECS):
        build(name)
    print(f"images ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
