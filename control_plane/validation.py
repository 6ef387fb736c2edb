"""Artifact validation in sandboxed, single-use worker processes.

A registered artifact is untrusted: loading it may raise, hang, exhaust memory, crash the interpreter or
(through a pickle) try to run code. So each artifact is loaded from its file by a fresh process
(control_plane.validation_worker) that:
- gets an allow-listed environment: no FLEET_* secrets, no Triton admin key, no AWS_* or other credentials;
- runs in its own empty network namespace (`unshare --net`) where this machine allows it (root or user
  namespaces); `network_isolated` says whether it does;
- has an address-space limit (RLIMIT_AS) sized from the artifact, a CPU-time limit (RLIMIT_CPU), and a
  wall-clock timeout after which it is killed;
- handles one artifact and exits, so nothing one artifact did can affect the next.
Importing torch takes seconds, so a few workers are started ahead ("spares", torch imported, no job yet)
and the limits are applied to a spare with prlimit(2) once the artifact's size is known. The web server
only ever sees a verdict; whatever happens to a worker, the next validation gets a new one.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The only variables a worker inherits: what Python, torch and the dynamic linker need. Anything else
# (tokens, keys, AWS_*, proxies) stays out because it is not listed.
ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "PYTHONPATH", "PYTHONSAFEPATH", "VIRTUAL_ENV",
             "LD_LIBRARY_PATH", "TZ")


class ArtifactRejected(ValueError):
    """The artifact is not a model matching its declared signature; the message says why and what to fix."""


class ValidatorUnavailable(RuntimeError):
    """No worker could be started (a problem of this machine, not of the artifact)."""


@dataclass(frozen=True)
class SandboxLimits:
    """How much one validation may use; the memory limit grows with the artifact (see `memory_for`)."""

    timeout_s: float = 120.0
    cpu_s: int = 120
    memory_base_bytes: int = 3 * 2**30 // 2
    memory_factor: float = 3.0

    def memory_for(self, artifact_bytes: int) -> int:
        return int(self.memory_base_bytes + self.memory_factor * artifact_bytes)


def network_isolation_available() -> bool:
    """Whether `unshare --net` works here (root, or unprivileged user namespaces with --map-root-user)."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Worker:
    """One started worker process, torch imported, waiting for its single job."""

    def __init__(self, command: list[str], env: dict[str, str], scratch: Path):
        self.stderr = tempfile.TemporaryFile(dir=scratch)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr, env=env, cwd=scratch, start_new_session=True)
        self.ready = self.process.stdout.readline() == b"ready\n"

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = [line for line in self.stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1][:300] if lines else ""

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.stderr.close()


class ArtifactValidator:
    """Validates artifacts in single-use sandboxed workers, `workers` at a time, with spares kept ready."""

    def __init__(self, workers: int = 2, limits: SandboxLimits | None = None, scratch: Path | None = None,
                 isolate_network: bool | None = None):
        self.workers = max(1, workers)
        self.limits = limits or SandboxLimits()
        self.scratch = Path(scratch or tempfile.mkdtemp(prefix="fleet-validator-"))
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.network_isolated = network_isolation_available() if isolate_network is None else isolate_network
        if not self.network_isolated:
            log.warning("validator workers share the host's network: `unshare --net` is not permitted here")
        self._slots = threading.Semaphore(self.workers)
        self._spares: queue.Queue[_Worker | Exception] = queue.Queue()
        self._closed = threading.Event()
        for _ in range(self.workers):
            self._start_spare()

    # ---- workers -------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "control_plane.validation_worker"]
        return (["unshare", "--net"] + command) if self.network_isolated else command

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ENV_ALLOW}
        env.update(HOME=str(self.scratch), TMPDIR=str(self.scratch), PYTHONSAFEPATH="1",
                   PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   TORCH_FORCE_WEIGHTS_ONLY_LOAD="1")
        return env

    def _spawn(self) -> _Worker:
        worker = _Worker(self._command(), self._env(), self.scratch)
        if not worker.ready:
            tail = worker.stderr_tail()
            worker.kill()
            raise RuntimeError(f"a validator worker did not start: {tail}")
        return worker

    def _start_spare(self) -> None:
        def run() -> None:
            try:
                worker = self._spawn()
            except (OSError, RuntimeError) as error:
                log.error("%s", error)
                self._spares.put(error)
                return
            if self._closed.is_set():
                worker.kill()
            else:
                self._spares.put(worker)
        threading.Thread(target=run, name="validator-spare", daemon=True).start()

    def _take(self) -> _Worker:
        try:
            worker = self._spares.get(timeout=self.limits.timeout_s)
        except queue.Empty:
            raise ValidatorUnavailable(f"no validator worker started within {self.limits.timeout_s:.0f} s") \
                from None
        self._start_spare()
        if isinstance(worker, Exception):
            raise ValidatorUnavailable(str(worker))
        if worker.process.poll() is not None:  # a spare that died while waiting: start one now
            worker.kill()
            try:
                return self._spawn()
            except (OSError, RuntimeError) as error:
                raise ValidatorUnavailable(str(error)) from None
        return worker

    # ---- validation ----------------------------------------------------------------------------
    def validate(self, path: Path, fmt: str, signature: dict, artifact_bytes: int | None = None) -> None:
        """Load the artifact at `path` in a sandboxed worker and call it; raises ArtifactRejected."""
        size = artifact_bytes if artifact_bytes is not None else Path(path).stat().st_size
        memory = self.limits.memory_for(size)
        with self._slots:
            worker = self._take()
            try:
                verdict = self._run(worker, path, fmt, signature, memory)
            finally:
                worker.kill()
        if not verdict["ok"]:
            raise ArtifactRejected(self._explain(verdict, memory))

    def _run(self, worker: _Worker, path: Path, fmt: str, signature: dict, memory: int) -> dict:
        pid = worker.process.pid
        cpu = int(_cpu_seconds(pid)) + self.limits.cpu_s
        resource.prlimit(pid, resource.RLIMIT_AS, (memory, memory))
        resource.prlimit(pid, resource.RLIMIT_CPU, (cpu, cpu + 5))
        job = json.dumps({"path": str(Path(path).resolve()), "format": fmt, "signature": signature}) + "\n"
        started = time.monotonic()
        try:
            out, _ = worker.process.communicate(job.encode(), timeout=self.limits.timeout_s)
        except subprocess.TimeoutExpired:
            return {"ok": False, "kind": "timeout", "reason": f"{time.monotonic() - started:.0f} s"}
        lines = out.decode(errors="replace").strip().splitlines()
        if worker.process.returncode == 0 and lines:
            return json.loads(lines[-1])
        code = worker.process.returncode
        if code == -signal.SIGXCPU:  # the soft RLIMIT_CPU was reached
            return {"ok": False, "kind": "cpu", "reason": ""}
        cause = signal.Signals(-code).name if code < 0 else f"exit status {code}"
        return {"ok": False, "kind": "crash", "reason": f"{cause}; {worker.stderr_tail()}".strip("; ")}

    def _explain(self, verdict: dict, memory: int) -> str:
        kind, reason = verdict.get("kind"), verdict.get("reason", "")
        if kind == "timeout":
            return (f"the artifact did not load and run within {self.limits.timeout_s:.0f} s (setting "
                    "validation_timeout_s): it hangs or is far too slow for its declared input shapes; check "
                    "the model with the signature's shapes, or declare smaller fixed dimensions")
        if kind == "cpu":
            return (f"the artifact used more than {self.limits.cpu_s} s of CPU time while loading and running "
                    "once (setting validation_cpu_s); check that one forward pass at the declared shapes ends")
        if kind == "memory":
            return (f"loading and running the artifact needs more than the validator's memory limit of "
                    f"{memory} bytes ({self.limits.memory_factor:g} x its size + "
                    f"{self.limits.memory_base_bytes} bytes; settings validation_memory_factor and "
                    f"validation_memory_base_bytes): {reason}")
        if kind == "crash":
            return (f"loading or running the artifact crashed the validator process ({reason}); it is not a "
                    "model this server can load: re-save it with torch.jit.save or torch.export.save")
        return reason

    def close(self) -> None:
        self._closed.set()
        while True:
            try:
                spare = self._spares.get_nowait()
            except queue.Empty:
                break
            if isinstance(spare, _Worker):
                spare.kill()

