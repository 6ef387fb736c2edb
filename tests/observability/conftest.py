"""A real local stack laid out like `fleet up`'s .fleet/: SeaweedFS, tritonserver(s) and the control plane.

Each module that asks for a stack gets its own (the failure tests stop parts of theirs). Triton runs with
summary latencies on, as the ECS and EKS servers do, so the p99 panels and alarms have their metric.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests

from fleet.processes import stop_group
from fleet.seaweedfs import SeaweedS3
from fleet.triton_server import TritonServer, free_port
from fleet.waiting import wait_for

TOKEN = "observe-test-token"
ADMIN_KEY = "observe-test-admin-key"
SUMMARY = "--metrics-config=summary_latencies=true"


@dataclass
class Stack:
    root: Path
    s3: SeaweedS3
    servers: dict[str, TritonServer]
    url: str = ""
    metrics_url: str = ""
    process: subprocess.Popen | None = None
    models: list = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.root / "control-plane.log"

    def api(self, token: str | None = TOKEN) -> requests.Session:
        session = requests.Session()
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        return session

    def start_control_plane(self) -> None:
        port, metrics_port = free_port(), free_port()
        self.url, self.metrics_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
        env = {**os.environ, **self.s3.environment(), "FLEET_API_TOKEN": TOKEN, "FLEET_TRITON_ADMIN_KEY": ADMIN_KEY,
               "FLEET_DATABASE_URL": f"sqlite:///{self.root / 'registry.db'}", "FLEET_WORK_DIR": str(self.root / "cp"),
               "FLEET_REPOSITORY_ROOT": str(self.root),
               "FLEET_REPOSITORY_URI": "s3://fleet-models/repository", "FLEET_S3_ENDPOINT_URL": self.s3.endpoint_url,
               "FLEET_RECONCILE_INTERVAL_S": "0.5", "FLEET_SERVER_DEAD_AFTER_S": "2", "FLEET_PACK_SIZE": "10",
               "FLEET_METRICS_PORT": str(metrics_port), "FLEET_METRICS_HOST": "127.0.0.1",
               "FLEET_STATUS_REFRESH_S": "30", "PYTHONSAFEPATH": "1"}
        with open(self.log, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleet.cli", "control-plane", "serve", "--port", str(port)],
                env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                return requests.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, 90, what="control plane ready")
        for name, server in self.servers.items():
            response = self.api().post(f"{self.url}/api/v1/servers", json={
                "name": name, "family": "cpu", "http_url": server.http_url, "grpc_url": server.grpc_url,
                "capacity_bytes": 4 * 2**30, "repository_path": str(server.repository)})
            assert response.status_code == 201, response.text

    def register(self, models_dir: Path, entry) -> requests.Response:
        signature = {"inputs": [i.model_dump(mode="json") for i in entry.inputs],
                     "outputs": [o.model_dump(mode="json") for o in entry.outputs]}
        with open(models_dir / entry.file, "rb") as artifact:
            return self.api().post(f"{self.url}/api/v1/models", data={"name": entry.id,
                                                                      "signature": json.dumps(signature)},
                                   files={"artifact": ("model.pt", artifact)})

    def model(self, name: str) -> dict:
        return self.api().get(f"{self.url}/api/v1/models/{name}").json()

    def infer(self, name: str, arrays: list[np.ndarray], entry) -> requests.Response:
        """One KServe v2 HTTP request to the model's pack, routed by the model_id parameter."""
        model = self.model(name)
        server = next(s for s in self.servers.values() if s.grpc_url == model["endpoints"][0]["grpc_url"])
        inputs = [{"name": spec.name, "datatype": spec.dtype, "shape": list(array.shape),
                   "data": array.flatten().tolist()} for spec, array in zip(entry.inputs, arrays, strict=True)]
        return requests.post(f"{server.http_url}/v2/models/{model['pack']}/infer", timeout=30,
                             json={"inputs": inputs, "parameters": {"model_id": name}})

    def stop(self) -> None:
        if self.process:
            stop_group(self.process)
        for server in self.servers.values():
            server.stop()
        self.s3.stop()


def start_stack(root: Path, servers: tuple[str, ...] = ("triton-a",)) -> Stack:
    s3 = SeaweedS3(root / "s3").start()
    s3.create_bucket("fleet-models")
    started = {}
    try:
        for name in servers:
            repo = root / "servers" / name / "repository"
            repo.mkdir(parents=True)
            started[name] = TritonServer(repo, admin_key=ADMIN_KEY, extra_args=(SUMMARY,),
                                         log_path=root / "servers" / name / "tritonserver.log").start()
        stack = Stack(root, s3, started)
        stack.start_control_plane()
    except BaseException:
        for server in started.values():
            server.stop()
        s3.stop()
        raise
    return stack


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
