"""Artifact validation in sandboxed, single-use child processes.

A registered artifact is untrusted: loading it may raise, hang, exhaust memory, crash the interpreter or
(through a pickle) try to run code. So each artifact is loaded from its file by a fresh process that:
- gets an allow-listed environment: no FLEET_* secrets, no Triton admin key, no AWS_* or other credentials;
- runs in its own empty network namespace (`unshare --net`) where this machine allows it (root or user
  namespaces); `network_isolated` says whether it does;
- has an address-space limit (RLIMIT_AS) sized from the artifact and a CPU-time limit (RLIMIT_CPU), set
  before it opens the file, and a wall-clock timeout after which it is killed;
- handles one artifact and exits, so nothing one artifact did can affect the next.
Importing torch costs seconds of CPU, far more than checking a small model, so the fresh processes are
forked from a few sandboxed fork servers (control_plane.validation_worker) that imported torch once and
never touch an artifact themselves. The web server only ever sees a verdict; a fork server that fails is
replaced.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
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


class _Server:
    """One started fork server (control_plane.validation_worker), torch imported, serving one job at a time."""

    def __init__(self, command: list[str], env: dict[str, str], scratch: Path):
        self.scratch = scratch
        self.stderr = tempfile.TemporaryFile(dir=scratch)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr, env=env, cwd=scratch, start_new_session=True)
        self.ready = self.process.stdout.readline() == b"ready\n"

    def alive(self) -> bool:
        return self.ready and self.process.poll() is None

    def ask(self, job: dict, timeout_s: float) -> dict | None:
        """Send one job and wait for its verdict; None if the server died or stopped answering."""
        try:
            self.process.stdin.write((json.dumps(job) + "\n").encode())
            self.process.stdin.flush()
        except OSError:
            return None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        if not ready:
            return None
        line = self.process.stdout.readline()
        return json.loads(line) if line else None

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
    """Validates artifacts in fresh sandboxed child processes, `workers` at a time (one fork server each)."""

    def __init__(self, workers: int = 2, limits: SandboxLimits | None = None, scratch: Path | None = None,
                 isolate_network: bool | None = None):
        self.workers = max(1, workers)
        self.limits = limits or SandboxLimits()
        self.scratch = Path(scratch or tempfile.mkdtemp(prefix="fleet-validator-"))
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.network_isolated = network_isolation_available() if isolate_network is None else isolate_network
        if not self.network_isolated:
            log.warning("validator workers share the host's network: `unshare --net` is not permitted here")
        self._idle: queue.Queue[_Server | Exception] = queue.Queue()
        self._closed = threading.Event()
        for _ in range(self.workers):
            self._start_server()

    # ---- servers -------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "control_plane.validation_worker"]
        return (["unshare", "--net"] + command) if self.network_isolated else command

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ENV_ALLOW}
        env.update(HOME=str(self.scratch), TMPDIR=str(self.scratch), PYTHONSAFEPATH="1",
                   PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   TORCH_FORCE_WEIGHTS_ONLY_LOAD="1")
        return env

    def _start_server(self) -> None:
        """Start a fork server in the background (importing torch takes seconds) and make it idle."""
        def run() -> None:
            try:
                server = _Server(self._command(), self._env(), self.scratch)
                if not server.alive():
                    tail = server.stderr_tail()
                    server.kill()
                    raise RuntimeError(f"a validator worker did not start: {tail}")
            except (OSError, RuntimeError) as error:
                log.error("%s", error)
                self._idle.put(error)
                return
            if self._closed.is_set():
                server.kill()
            else:
                self._idle.put(server)
        threading.Thread(target=run, name="validator-start", daemon=True).start()

    def _take(self) -> _Server:
        try:
            server = self._idle.get(timeout=self.limits.timeout_s + 60)
        except queue.Empty:
            raise ValidatorUnavailable("no validator worker became free in time") from None
        if isinstance(server, Exception):
            self._start_server()  # try again for the next caller
            raise ValidatorUnavailable(str(server))
        if not server.alive():
            server.kill()
            self._start_server()
            return self._take()
        return server

    # ---- validation ----------------------------------------------------------------------------
    def validate(self, path: Path, fmt: str, signature: dict, artifact_bytes: int | None = None,
                 split_dir: Path | None = None, program: dict | None = None) -> dict | None:
        """Load the artifact at `path` in a fresh sandboxed process and call it; raises ArtifactRejected.

        With `split_dir`, the same process also splits the artifact into its architecture's program and its
        weights there (model_repository/families.py) and the split's outcome is returned. With `program`
        ({"path", "spec"}), `path` is a weights file, checked by binding it to that program and calling it.
        """
        size = artifact_bytes if artifact_bytes is not None else Path(path).stat().st_size
        memory = self.limits.memory_for(size)
        job = {"path": str(Path(path).resolve()), "format": fmt, "signature": signature,
               "memory_bytes": memory, "cpu_s": self.limits.cpu_s, "timeout_s": self.limits.timeout_s,
               "log": str(self.scratch / f"job-{uuid.uuid4().hex}.log")}
        if split_dir is not None:
            job["split_dir"] = str(Path(split_dir).resolve())
        if program is not None:
            job["program"] = {"path": str(Path(program["path"]).resolve()), "spec": program["spec"]}
        server = self._take()
        verdict = server.ask(job, self.limits.timeout_s + 30)
        if verdict is None:  # the fork server itself failed: replace it; the artifact gets the blame
            tail = server.stderr_tail()
            server.kill()
            self._start_server()
            verdict = {"ok": False, "kind": "crash", "reason": tail or "the validator worker stopped answering"}
        else:
            self._idle.put(server)
        if not verdict["ok"]:
            raise ArtifactRejected(self._explain(verdict, memory))
        return verdict.get("split")

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
                spare = self._idle.get_nowait()
            except queue.Empty:
                break
            if isinstance(spare, _Server):
                spare.kill()

