"""One real stack for the reliability tests: SeaweedFS, two tritonservers and the control plane (waitress).

Every secret is random and distinctive for the session (bearer token, Triton admin key, S3 access and
secret keys) so the logs the stack writes can be searched for them. The control plane probes stubs every
second here (FLEET_STUB_PROBE_INTERVAL_S) so that stub death is seen quickly.
"""
from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from sqlalchemy import text

from control_plane.db import make_engine
from fleet.seaweedfs import SeaweedS3
from fleet.settings import DevelopmentSettings
from fleet.triton_server import TritonServer, free_port


def _control_plane_helpers():
    """tests/control_plane/conftest.py's ControlPlane, loaded by path (its fixtures are not re-registered)."""
    path = Path(__file__).resolve().parents[1] / "control_plane" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_reliability_cp_helpers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ControlPlane = _control_plane_helpers().ControlPlane
TOKEN = f"reltoken{secrets.token_hex(12)}"
ADMIN_KEY = f"reladmin{secrets.token_hex(12)}"
S3_ACCESS_KEY = f"relaccess{secrets.token_hex(8)}"
S3_SECRET_KEY = f"relsecret{secrets.token_hex(16)}"
SECRETS = {"bearer token": TOKEN, "triton admin key": ADMIN_KEY, "s3 access key": S3_ACCESS_KEY,
           "s3 secret key": S3_SECRET_KEY}
BUCKET = "rel-models"
SERVERS = ("triton-a", "triton-b")


def _databases() -> list[str]:
    return DevelopmentSettings.from_env().test_databases


def pytest_collection_modifyitems(config, items):
    """Tests marked one_registry (servers and stubs killed: the data plane's and reconciler's behaviour,
    which every API and race test already checks on both databases) run on the first database only."""
    first = (_databases() or ["sqlite"])[0]
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        skip = item.get_closest_marker("one_registry") and params.get("stack", first) != first
        (drop if skip else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", params=_databases())
def stack(request, tmp_path_factory):
    """The whole stack for tests/reliability (the last folder of the suite, so it lives only for them), once
    on SQLite and once on PostgreSQL (a fresh database on the session's server)."""
    root = tmp_path_factory.mktemp("reliability")
    database_url = (f"sqlite:///{root / 'registry.db'}" if request.param == "sqlite"
                    else request.getfixturevalue("postgres").create_database())
    s3 = SeaweedS3(root / "seaweed", access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY)
    (root / "seaweed").mkdir()
    s3.start()
    s3.create_bucket(BUCKET)
    servers: dict[str, tuple[TritonServer, Path]] = {}
    cp = None
    try:
        for name in SERVERS:
            repo = root / name / "repository"
            repo.mkdir(parents=True)
            servers[name] = (TritonServer(repo, admin_key=ADMIN_KEY).start(), repo)
        env = {**os.environ, **s3.environment(), "FLEET_API_TOKEN": TOKEN, "FLEET_TRITON_ADMIN_KEY": ADMIN_KEY,
               "FLEET_DATABASE_URL": database_url, "FLEET_WORK_DIR": str(root / "work"),
               "FLEET_REPOSITORY_ROOT": str(root),
               "FLEET_REPOSITORY_URI": f"s3://{BUCKET}/repo-{uuid.uuid4().hex[:8]}",
               "FLEET_S3_ENDPOINT_URL": s3.endpoint_url, "FLEET_MAX_UPLOAD_BYTES": str(2**20),
               "FLEET_RECONCILE_INTERVAL_S": "0.5", "FLEET_SERVER_DEAD_AFTER_S": "3", "FLEET_PACK_SIZE": "8",
               "FLEET_STUB_PROBE_INTERVAL_S": "1", "PYTHONSAFEPATH": "1"}
        cp = ControlPlane(f"http://127.0.0.1:{free_port()}", env, root / "control-plane.log").start()
        for name, (server, repo) in servers.items():
            response = cp.api(TOKEN).post(f"{cp.url}/api/v1/servers", json={
                "name": name, "family": "cpu", "http_url": server.http_url, "grpc_url": server.grpc_url,
                "capacity_bytes": 8 * 2**30, "repository_path": str(repo)})
            assert response.status_code == 201, response.text
        yield {"cp": cp, "servers": servers, "root": root, "s3": s3, "database_url": database_url}
    finally:
        if cp is not None:
            cp.stop()
        for server, _ in servers.values():
            # The fuzz tests leave a request hanging in a stub on purpose, which holds Triton's graceful exit
            # for its whole --exit-timeout-secs; a graceful stop is not under test here.
            server.stop(timeout_s=3)
        s3.stop()


# ---- helpers shared by the test files -------------------------------------------------------------
def api(stack, token: str | None = TOKEN) -> requests.Session:
    return stack["cp"].api(token)


def url(stack, path: str) -> str:
    return f"{stack['cp'].url}/api/v1{path}"


def signature_of(entry) -> str:
    return json.dumps({"inputs": [i.model_dump(mode="json") for i in entry.inputs],
                       "outputs": [o.model_dump(mode="json") for o in entry.outputs]})


def register(stack, entry, models_dir: Path, name: str | None = None, data: bytes | None = None,
             session: requests.Session | None = None) -> requests.Response:
    artifact = data if data is not None else (models_dir / entry.file).read_bytes()
    return (session or api(stack)).post(url(stack, "/models"), timeout=120,
                                        data={"name": name or entry.id, "signature": signature_of(entry)},
                                        files={"artifact": ("model.pt", artifact)})


def model(stack, name: str) -> dict | None:
    response = api(stack).get(url(stack, f"/models/{name}"), timeout=30)
    return response.json() if response.status_code == 200 else None


def servable(stack, name: str) -> dict | None:
    body = model(stack, name)
    return body if body and body["status"] == "servable" else None


def infer(grpc_url: str, pack: str, member: str, x: np.ndarray, dtype: str | None = None,
          timeout_s: float = 30.0) -> np.ndarray:
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        tensor = grpcclient.InferInput("INPUT__0", list(x.shape), dtype or
                                       {"float32": "FP32", "int64": "INT64"}.get(x.dtype.name, "FP32"))
        tensor.set_data_from_numpy(x)
        return client.infer(pack, [tensor], parameters={"model_id": member},
                            client_timeout=timeout_s).as_numpy("OUTPUT__0")
    finally:
        client.close()


def sql(stack, statement: str, **params) -> list[tuple]:
    """Rows of a query on the stack's registry database, whichever backend it runs on."""
    engine = make_engine(stack["database_url"])
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(statement), params)]
    finally:
        engine.dispose()


def kill_control_plane(stack) -> None:
    """SIGKILL the control plane and its validation workers (its own process group)."""
    cp = stack["cp"]
    os.killpg(cp.process.pid, signal.SIGKILL)
    cp.process.wait()
