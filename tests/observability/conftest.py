"""A real local stack laid out like `fleet up`'s .fleet/ (fleet/stack.py): SeaweedFS, tritonserver(s) and the
control plane.

Each module that asks for a stack gets its own (the failure tests stop parts of theirs). Triton runs with
summary latencies on, as the ECS and EKS servers do, so the p99 panels and alarms have their metric.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from fleet.stack import Stack, StackSpec

TOKEN = "observe-test-token"
ADMIN_KEY = "observe-test-admin-key"
SUMMARY = "--metrics-config=summary_latencies=true"


def start_stack(root: Path, servers: tuple[str, ...] = ("triton-a",)) -> Stack:
    """A stack laid out like `fleet up`'s .fleet/ (fleet/stack.py), its servers registered; the control plane
    serves /metrics without a token on a port of its own (ControlPlane.metrics_url)."""
    stack = Stack(StackSpec(root, servers=servers, token=TOKEN, admin_key=ADMIN_KEY, triton_args=(SUMMARY,),
                            metrics_port=True, observability={"metrics_host": "127.0.0.1", "status_refresh_s": 30},
                            settings={"reconcile_interval_s": 0.5, "server_dead_after_s": 2, "pack_size": 10}))
    stack.start()
    try:
        stack.register_servers(capacity_bytes=4 * 2**30)
    except BaseException:
        stack.stop()
        raise
    return stack


def infer(stack: Stack, name: str, arrays: list[np.ndarray], entry) -> requests.Response:
    """One KServe v2 HTTP request to the model's pack on its first endpoint, routed by the model_id parameter
    (model_repository.triton_admin: the raw answer, error codes included)."""
    model = stack.model(name)
    server = next(s for s in stack.servers.values() if s.grpc_url == model["endpoints"][0]["grpc_url"])
    inputs = [{"name": spec.name, "datatype": spec.dtype, "shape": list(array.shape),
               "data": array.flatten().tolist()} for spec, array in zip(entry.inputs, arrays, strict=True)]
    return server.admin.infer(model["pack"], inputs, member=name)


@pytest.fixture(scope="module")
def stack_factory(tmp_path_factory):
    made: list[Stack] = []

    def make(servers: tuple[str, ...] = ("triton-a",)) -> Stack:
        made.append(start_stack(tmp_path_factory.mktemp("fleet"), servers))
        return made[-1]

    yield make
    for stack in made:
        stack.stop()


def chromium() -> str:
    """Debian's chromium, installed when missing (the test setup owns this; apt needs root)."""
    found = shutil.which("chromium")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "chromium"], check=False, capture_output=True, timeout=600)
    found = shutil.which("chromium")
    if not found:
        pytest.fail("Debian's chromium is not installed and `apt-get install -y chromium` failed: install it")
    return found


def headless(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium, headless, with a fresh profile and no background traffic (this machine has no network)."""
    profile = tmp_path / f"chromium-profile-{time.monotonic_ns()}"
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)
