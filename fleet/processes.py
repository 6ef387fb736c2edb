"""Stopping a process started in its own session: the whole group (a server and its children) goes."""
from __future__ import annotations

import os
import signal
import subprocess


def stop_group(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group, wait up to `timeout_s`, then SIGKILL what is left; a group already gone
    is not an error."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
