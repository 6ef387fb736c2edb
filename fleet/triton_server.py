"""Runs the real `tritonserver` (shipped in the PyPI wheel nvidia-pytriton) as a local process.

Why a wrapper: the wheel's binary needs a backend directory that holds the Python-backend stub built for
*our* Python, the stub must find this virtualenv first on PATH (it reads that venv's site-packages), and
a stopped server must leave no stub processes behind. This module owns those details for `fleet serve`,
the demo and the tests.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from model_repository.triton_admin import ADMIN_HEADER, TritonAdmin

log = logging.getLogger(__name__)


class TritonServerError(RuntimeError):
    """The server could not start or answer; the message says why and where the log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def triton_home() -> Path:
    """The folder of the wheel's tritonserver (bin/, backends/, python_backend_stubs/)."""
    try:
        import pytriton
    except ImportError as error:
        raise TritonServerError("tritonserver is not installed here (the nvidia-pytriton wheel, Linux with glibc "
                                ">= 2.35): install triton-fleet[server] (`pip install 'triton-fleet[server]'`; "
                                "`make install` in a checkout)") from error
    return Path(pytriton.__file__).parent / "tritonserver"


def backend_directory(cache: Path | None = None) -> Path:
    """A backends folder whose Python backend carries the stub for the running interpreter.

    Built once in a cache folder (never by editing the installed wheel).
    """
    home = triton_home()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonServerError(f"the wheel has no Python-backend stub for Python {version}")
    target = (cache or Path.home() / ".cache" / "triton-fleet") / f"backends-py{version}"
    python_dir = target / "python"
    if not (python_dir / "triton_python_backend_stub").exists():
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(home / "backends", tmp)
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


@dataclass
class TritonServer:
    """A tritonserver on 127.0.0.1 in explicit model-control mode.

    Use as a context manager; `stop()` terminates the server and every stub it started.
    """

    repository: Path
    family: str = "cpu"
    admin_key: str | None = None
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    log_path: Path | None = None
    load_models: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    startup_timeout_s: float = 120.0
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        args = [
            str(triton_home() / "bin" / "tritonserver"),
            f"--model-repository={Path(self.repository).resolve()}",
            f"--backend-directory={backend_directory()}",
            "--model-control-mode=explicit",
            # Auto-complete spawns a throwaway stub per load: 75.8 s -> 18.9 s for 200 models.
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-timeout-secs=10",
            "--http-address=127.0.0.1", f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
            "--log-verbose=0",
        ]
        if self.family != "cpu":
            args.append(f"--model-config-name={self.family}")
        if self.admin_key:
            # Only holders of the key (the control plane) may load or unload models.
            args.append(f"--http-restricted-api=model-repository:{ADMIN_HEADER}={self.admin_key}")
            args.append(f"--grpc-restricted-protocol=model-repository:{ADMIN_HEADER}={self.admin_key}")
        args += [f"--load-model={name}" for name in self.load_models]
        return args + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The stub reads pyvenv.cfg of the first python3 on PATH: put this venv first.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # The stub's RPATH points into the wheel; our copy of it finds the wheel's libraries here.
        libs = triton_home().parents[1] / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = f"{libs}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}"
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def start(self) -> TritonServer:
        default_log = Path(self.repository).resolve().parent / f"triton-{self.http_port}.log"
        self.log_path = Path(self.log_path or default_log)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "ab")  # noqa: SIM115  owned by the child for its lifetime
        log.info("starting tritonserver (%s) on %s, log %s", self.family, self.http_url, self.log_path)
        self.process = subprocess.Popen(self.command(), stdout=log_file, stderr=subprocess.STDOUT,
                                        env=self.environment(), start_new_session=True)
        log_file.close()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise TritonServerError(f"tritonserver exited with code {self.process.returncode} "
                                        f"during start-up; last log lines:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.2)
        self.stop()
        raise TritonServerError(f"tritonserver not ready after {self.startup_timeout_s:.0f} s; "
                                f"last log lines:\n{self.log_tail()}")

    @property
    def admin(self) -> TritonAdmin:
        """The admin client of this server (with its key and metrics URL)."""
        return TritonAdmin(self.http_url, self.admin_key, self.metrics_url)

    def is_ready(self) -> bool:
        return self.admin.ready()

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the server's process group (server and stubs), SIGKILL what is left after timeout."""
        if self.process is None or self.process.poll() is not None:
            self._kill_group(signal.SIGKILL)
            return
        self._kill_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("tritonserver did not stop in %.0f s; killing it", timeout_s)
        self._kill_group(signal.SIGKILL)
        self.process.wait()

    def _kill_group(self, sig: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- repository API (needs the admin key when one is set): model_repository.triton_admin -------
    def load(self, name: str, timeout_s: float = 300.0) -> None:
        result = self.admin.load(name, timeout_s=timeout_s)
        if not result.ok:
            raise TritonServerError(f"loading '{name}': {result.error}")

    def unload(self, name: str, timeout_s: float = 60.0) -> None:
        result = self.admin.unload(name, timeout_s=timeout_s)
        if not result.ok:
            raise TritonServerError(f"unloading '{name}': {result.error}")

    def ready_models(self) -> set[str]:
        return self.admin.ready_models()

    def metrics(self) -> str:
        return self.admin.metrics_text()
