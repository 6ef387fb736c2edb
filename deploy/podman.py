"""podman as this machine needs it (see /work/shared/NOTES.md, "Building and running container images here").

Why these flags: podman's default runtime crun fails here ("cgroups in hybrid mode not supported"), runc
with the cgroupfs manager works, and runc refuses to start without explicit nofile/nproc limits.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

RUNC = "/usr/sbin/runc"
ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")


@dataclass(frozen=True)
class Tool:
    """One program that podman (or our image builds) executes, and the Debian package that brings it."""

    package: str
    candidates: tuple[str, ...]  # a name on PATH or an absolute path; any one present is enough
    why: str

    def present(self) -> bool:
        return any(os.path.exists(c) if c.startswith("/") else shutil.which(c) for c in self.candidates)


# Each program podman runs for what the tests and `make images` do, checked one by one: a machine where
# podman was installed once by hand can hide a missing one (slirp4netns is only a Recommends of Debian's
# podman, and `--no-install-recommends` dropped it: every container with its own network failed).
TOOLS: tuple[Tool, ...] = (
    Tool("podman", ("podman",), "builds and runs the images"),
    Tool("runc", (RUNC,), "the OCI runtime (crun fails here: cgroups in hybrid mode)"),
    Tool("conmon", ("conmon", "/usr/libexec/podman/conmon", "/usr/bin/conmon"), "monitors each container"),
    Tool("slirp4netns", ("slirp4netns",), "the network of a pod/task container that reaches the host's loopback"),
    Tool("debootstrap", ("debootstrap", "/usr/sbin/debootstrap"), "builds the Debian base image (no registry here)"),
)
# For images of another architecture (Graviton: arm64) built and run here under emulation.
EMULATION_TOOLS: tuple[Tool, ...] = (
    Tool("qemu-user-static", ("qemu-aarch64-static", "/usr/bin/qemu-aarch64-static"), "runs arm64 binaries"),
    Tool("binfmt-support", ("update-binfmts", "/usr/sbin/update-binfmts"), "registers qemu with the kernel"),
)
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


class PodmanUnavailable(RuntimeError):
    """podman cannot run here; the message says why and what would fix it."""


def base_command() -> list[str]:
    return ["podman", "--runtime", RUNC, "--cgroup-manager=cgroupfs"]


def missing_tools(tools: tuple[Tool, ...] = TOOLS) -> list[Tool]:
    return [tool for tool in tools if not tool.present()]


def _describe(tools: list[Tool]) -> str:
    return "; ".join(f"{t.candidates[0]} ({t.why})" for t in tools)


def _apt_install(packages: list[str]) -> None:
    """apt-get install, refreshing the package lists only when the first try cannot find a package."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise PodmanUnavailable(f"apt-get could not install {' '.join(packages)}: {done.stderr[-500:]}")


def ensure_tools(install: bool = True, tools: tuple[Tool, ...] = TOOLS) -> None:
    """Every program in `tools` present, installed with apt-get when missing and allowed (root).

    The message of PodmanUnavailable names each missing program, what it is for and the command that
    installs it; the container tests skip with it.
    """
    missing = missing_tools(tools)
    if not missing:
        return
    packages = sorted({t.package for t in missing})
    fix = f"apt-get install -y {' '.join(packages)}"
    if not install:
        raise PodmanUnavailable(f"missing {_describe(missing)}: {fix}")
    if os.geteuid() != 0:
        raise PodmanUnavailable(f"missing {_describe(missing)} and not root: run as root, or `sudo {fix}`")
    if not shutil.which("apt-get"):
        raise PodmanUnavailable(f"missing {_describe(missing)} and no apt-get here: install {' '.join(packages)}")
    _apt_install(packages)
    still = missing_tools(tools)
    if still:
        raise PodmanUnavailable(f"installed {' '.join(packages)} but still missing {_describe(still)}")


def ensure_emulation(arch: str = "arm64", install: bool = True) -> None:
    """Binaries of `arch` run here through qemu-user-static registered with binfmt_misc.

    Why each step: Debian's qemu-user-static registers its interpreters through binfmt-support, which
    needs the binfmt_misc file system; a container or a fresh VM often has it unmounted (the folder is
    empty), and then an arm64 binary fails with "Exec format error".
    """
    if arch not in ("arm64", "aarch64"):
        raise PodmanUnavailable(f"emulation of {arch} is not set up by this project (only arm64)")
    ensure_tools(install=install, tools=EMULATION_TOOLS)
    if not (BINFMT_DIR / "register").exists():
        if os.geteuid() != 0:
            raise PodmanUnavailable(f"{BINFMT_DIR} is not mounted and not root: "
                                    f"`sudo mount -t binfmt_misc binfmt_misc {BINFMT_DIR}`")
        done = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise PodmanUnavailable(f"cannot mount binfmt_misc at {BINFMT_DIR}: {done.stderr.strip()}")
    if not (BINFMT_DIR / "qemu-aarch64").exists():
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, text=True)
    entry = BINFMT_DIR / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        raise PodmanUnavailable("qemu-aarch64 is not registered with binfmt_misc: "
                                "`update-binfmts --enable qemu-aarch64` (package binfmt-support)")


# A Graviton3-like (Neoverse V1) /proc/cpuinfo entry. qemu 7.2 (Debian bookworm) passes the host's x86
# /proc/cpuinfo through to emulated programs; torch's cpuinfo library finds no ARM processor in it and
# dereferences NULL while `import torch` loads torch._C (SIGSEGV, seen with torch 2.13.0 aarch64 here).
# Emulated builds and containers get this file over /proc/cpuinfo instead; a real arm64 host needs none.
_ARM64_CPUINFO = """processor\t: {n}
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc \
dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 \
dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""


def host_arch() -> str:
    """This machine's architecture as OCI names it (amd64, arm64)."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def emulation_volumes(arch: str) -> list[str]:
    """`--volume` arguments that an emulated `arch` container or build needs (none for the host's own)."""
    if arch == host_arch() or arch not in ("arm64", "aarch64"):
        return []
    path = Path.home() / ".cache" / "triton-fleet" / "cpuinfo-arm64"
    text = "\n".join(_ARM64_CPUINFO.format(n=n) for n in range(os.cpu_count() or 1))
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return ["--volume", f"{path}:/proc/cpuinfo:ro"]


def podman(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([*base_command(), *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ... failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def image_architecture(image: str) -> str:
    return podman("image", "inspect", "--format", "{{.Architecture}}", image).stdout.strip()


@dataclass
class Container:
    """A started container, named by podman; `remove()` stops and deletes it."""

    name: str

    def inspect(self) -> dict:
        out = podman("inspect", "--type", "container", self.name, check=False)
        return json.loads(out.stdout)[0] if out.returncode == 0 else {}

    def state(self) -> dict:
        return self.inspect().get("State", {})

    def running(self) -> bool:
        return bool(self.state().get("Running"))

    def exit_code(self) -> int | None:
        state = self.state()
        if not state or state.get("Running") or state.get("Status") in ("created", "configured"):
            return None
        return int(state.get("ExitCode", 0))

    def logs(self) -> str:
        out = podman("logs", self.name, check=False)
        return out.stdout + out.stderr

    def wait_exit(self, timeout_s: float) -> int:
        """The exit code once the container stopped; TimeoutError (with its logs) after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None:
                return code
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} still running after {timeout_s:.0f}s; logs:\n{self.logs()[-3000:]}")

    def exec(self, *argv: str) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *argv, check=False)

    def remove(self, grace_s: int = 2) -> None:
        podman("rm", "--force", "--time", str(grace_s), self.name, check=False)


def run_detached(image: str, name: str, argv: Sequence[str] = (), entrypoint: Sequence[str] | None = None,
                 env: dict[str, str] | None = None, mounts: Sequence[str] = (), extra: Sequence[str] = ()) -> Container:
    """`podman run -d` with this machine's flags; entrypoint None keeps the image's own."""
    args = ["run", "-d", "--name", name, *ULIMITS, *extra]
    if entrypoint is not None:
        args += ["--entrypoint", json.dumps(list(entrypoint))]
    for key, value in (env or {}).items():
        args += ["--env", f"{key}={value}"]
    for mount in mounts:
        args += ["--volume", mount]
    podman(*args, image, *argv)
    return Container(name)
