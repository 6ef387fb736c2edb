"""A real control plane (waitress, SeaweedFS, and SQLite or PostgreSQL: every module runs on both) in front
of two real tritonservers. Besides the all-scopes bootstrap token, the stack has one token per scope in a
tokens file (SCOPED_TOKENS), so tests can prove what each scope may and may not do."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from fleet import triton_server
from fleet.processes import stop_group
from fleet.triton_server import TritonServer, free_port

ADMIN_KEY = "cp-test-admin-key"
TOKEN = "cp-test-token"
SCOPED_TOKENS = {scope: f"cp-test-{scope}-{uuid.uuid4().hex}" for scope in ("admin", "write", "read", "loadtest")}


def write_tokens_file(path: Path, tokens: dict[str, str]) -> Path:
    """A FLEET_TOKENS_FILE granting each token (value) the scope named by its key; only hashes are written."""
    path.write_text(json.dumps({"tokens": [{"name": scope, "sha256": hashlib.sha256(token.encode()).hexdigest(),
                                            "scopes": [scope]} for scope, token in tokens.items()]}))
    return path


@dataclass
class ControlPlane:
    url: str
    env: dict
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> ControlPlane:
        port = int(self.url.rsplit(":", 1)[1])
        with open(self.log, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleet.cli", "control-plane", "serve", "--port", str(port)],
                env=self.env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if requests.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError(f"control plane not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process:
            stop_group(self.process)

    def api(self, token: str | None = TOKEN) -> requests.Session:
        session = requests.Session()
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        return session


def start_servers(root: Path, names) -> dict[str, TritonServer]:
    """One real tritonserver per name, each on its own empty repository (root/NAME/repository), with the
    tests' admin key."""
    return triton_server.start_servers(root, names, ADMIN_KEY)


def fleet_env(root: Path, seaweed, prefix: str, **overrides: str) -> dict[str, str]:
    """The environment of a test control plane over `root` (SQLite registry, SeaweedFS repository under a
    fresh prefix, 0.5 s reconcile interval); `overrides` are further FLEET_* variables."""
    return {**os.environ, **seaweed.environment(), "FLEET_API_TOKEN": TOKEN, "FLEET_TRITON_ADMIN_KEY": ADMIN_KEY,
            "FLEET_DATABASE_URL": f"sqlite:///{root / 'registry.db'}", "FLEET_WORK_DIR": str(root / "work"),
            "FLEET_REPOSITORY_ROOT": str(root), "FLEET_REPOSITORY_URI": f"s3://models/{prefix}-{uuid.uuid4().hex[:8]}",
            "FLEET_S3_ENDPOINT_URL": seaweed.endpoint_url, "FLEET_RECONCILE_INTERVAL_S": "0.5",
            "PYTHONSAFEPATH": "1", **overrides}


def register_servers(cp: ControlPlane, servers: dict[str, TritonServer], capacity_bytes: int = 2 * 2**30) -> None:
    """Register local servers through the API, with their metrics and the repository the control plane syncs."""
    api = cp.api()
    for name, server in servers.items():
        response = api.post(f"{cp.url}/api/v1/servers", json={
            "name": name, "family": "cpu", "http_url": server.http_url, "grpc_url": server.grpc_url,
            "metrics_url": server.metrics_url, "capacity_bytes": capacity_bytes,
            "repository_path": str(server.repository)})
        assert response.status_code == 201, response.text


def register_models(api: requests.Session, url: str, models_dir: Path, count: int, architecture: str = "mlp"):
    """Register the first `count` generated models of an architecture by upload; returns their entries."""
    from model_repository.manifest import Manifest

    entries = [m for m in Manifest.read(models_dir).models if m.architecture == architecture][:count]
    for entry in entries:
        signature = json.dumps({"inputs": [i.model_dump(mode="json") for i in entry.inputs],
                                "outputs": [o.model_dump(mode="json") for o in entry.outputs]})
        response = api.post(f"{url}/api/v1/models", data={"name": entry.id, "signature": signature},
                            files={"artifact": ("model.pt", (models_dir / entry.file).read_bytes())})
        assert response.status_code == 201, response.text
    return entries


@pytest.fixture(scope="module")
def stack(tmp_path_factory, seaweed, database_url):
    """SeaweedFS + two tritonservers + the control plane; the servers are registered through the API."""
    root = tmp_path_factory.mktemp("cp")
    servers = {}
    for name in ("triton-a", "triton-b"):
        repo = root / name / "repository"
        repo.mkdir(parents=True)
        servers[name] = (TritonServer(repo, admin_key=ADMIN_KEY).start(), repo)
    env = {**os.environ, **seaweed.environment(), "FLEET_API_TOKEN": TOKEN, "FLEET_TRITON_ADMIN_KEY": ADMIN_KEY,
           "FLEET_DATABASE_URL": database_url, "FLEET_WORK_DIR": str(root / "work"),
           "FLEET_REPOSITORY_ROOT": str(root), "FLEET_TOKENS_FILE": str(write_tokens_file(
               root / "tokens.json", SCOPED_TOKENS)),
           "FLEET_REPOSITORY_URI": f"s3://models/cp-{uuid.uuid4().hex[:8]}",
           "FLEET_S3_ENDPOINT_URL": seaweed.endpoint_url, "FLEET_MAX_UPLOAD_BYTES": str(2**20),
           "FLEET_RECONCILE_INTERVAL_S": "0.5", "PYTHONSAFEPATH": "1", "FLEET_SERVER_DEAD_AFTER_S": "3",
           "FLEET_PACK_SIZE": "10"}
    cp = ControlPlane(f"http://127.0.0.1:{free_port()}", env, root / "control-plane.log").start()
    api = cp.api()
    for name, (server, repo) in servers.items():
        response = api.post(f"{cp.url}/api/v1/servers", json={
            "name": name, "family": "cpu", "http_url": server.http_url, "grpc_url": server.grpc_url,
            "capacity_bytes": 8 * 2**30, "repository_path": str(repo)})
        assert response.status_code == 201, response.text
    yield {"cp": cp, "servers": servers, "root": root, "seaweed": seaweed, "database_url": database_url}
    cp.stop()
    for server, _ in servers.values():
        server.stop()
