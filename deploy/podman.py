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

RUNC = "/usr/sbin/runc"
ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")
APT_PACKAGES = ("podman", "runc", "debootstrap")


class PodmanUnavailable(RuntimeError):
    """podman cannot run here; the message says why and what would fix it."""


def base_command() -> list[str]:
    return ["podman", "--runtime", RUNC, "--cgroup-manager=cgroupfs"]


def ensure_tools(install: bool = True) -> None:
    """podman, runc and debootstrap present, installed with apt-get when missing and allowed (root)."""
    missing = [p for p in APT_PACKAGES if not (shutil.which(p) or os.path.exists(f"/usr/sbin/{p}"))]
    if not missing:
        return
    if not install:
        raise PodmanUnavailable(f"missing {', '.join(missing)}: apt-get install -y {' '.join(APT_PACKAGES)}")
    if os.geteuid() != 0:
        raise PodmanUnavailable(f"missing {', '.join(missing)} and not root: run as root, or "
                                f"`sudo apt-get install -y {' '.join(APT_PACKAGES)}`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        done = subprocess.run(["sh", "-c", f"apt-get update && apt-get install -y {' '.join(APT_PACKAGES)}"],
                              env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise PodmanUnavailable(f"apt-get could not install {' '.join(APT_PACKAGES)}: {done.stderr[-500:]}")


def podman(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([*base_command(), *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} ... failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


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
