"""The container tests install what podman needs, and say exactly what is missing when they cannot."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from deploy import podman
from deploy.podman import PodmanUnavailable, Tool

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_program_is_named_with_its_purpose_and_the_install_command():
    absent = Tool("slirp4netns", ("/nonexistent/slirp4netns",), "the network of a pod container")
    with pytest.raises(PodmanUnavailable) as raised:
        podman.ensure_tools(install=False, tools=(absent,))
    message = str(raised.value)
    assert "/nonexistent/slirp4netns (the network of a pod container)" in message
    assert "apt-get install -y slirp4netns" in message


def test_present_programs_need_nothing():
    podman.ensure_tools(install=False, tools=(Tool("sh", ("sh",), "a shell"),))


def test_every_network_mode_the_deploy_code_uses_has_its_program_checked():
    """slirp4netns is only a Recommends of Debian's podman: a plain install leaves it out."""
    used = set()
    for source in (ROOT / "deploy").glob("*.py"):
        used |= set(re.findall(r'"--network", f?"(\w+)', source.read_text()))
    checked = {t.package for t in podman.TOOLS}
    assert "slirp4netns" in used
    assert used - {"host", "container"} <= checked


def test_ci_installs_nothing_the_fixture_does_not():
    """One install path: .ci/run runs `make test`, and the fixture installs podman's programs."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE)
    assert "apt-get" not in "\n".join(line for line in ci.splitlines() if not line.startswith("#"))


def test_emulated_arm64_processes_see_an_arm_cpuinfo_and_native_ones_the_real_one():
    """qemu 7.2 passes the host's x86 /proc/cpuinfo through; torch's cpuinfo then crashes `import torch`."""
    assert podman.emulation_volumes(podman.host_arch()) == []
    if podman.host_arch() == "arm64":
        pytest.skip("a native arm64 host needs no stand-in")
    flag, volume = podman.emulation_volumes("arm64")
    source, target, mode = volume.split(":")
    assert (flag, target, mode) == ("--volume", "/proc/cpuinfo", "ro")
    text = Path(source).read_text()
    assert text.count("CPU implementer\t: 0x41") == text.count("processor\t:") == (os.cpu_count() or 1)
