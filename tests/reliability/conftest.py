"""One real stack for the reliability tests: SeaweedFS, two tritonservers and the control plane (waitress),
built by fleet/stack.py. Tests take `stack`, which is whole whatever ran before (a stopped server is
started again), so each test and each module runs alone or in any order.

Every secret is random and distinctive for the session (bearer token, Triton admin key, S3 access and
secret keys) so the logs the stack writes can be searched for them. The control plane probes stubs every
second here (FLEET_STUB_PROBE_INTERVAL_S) so that stub death is seen quickly.
"""
from __future__ import annotations

import secrets
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests
from sqlalchemy import text

from control_plane.db import make_engine
from fleet.client import infer_at
from fleet.settings import DevelopmentSettings
from fleet.stack import Stack, StackSpec
from fleet.waiting import wait_for

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
        skip = item.get_closest_marker("one_registry") and params.get("stack_session", first) != first
        (drop if skip else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", params=_databases())
def stack_session(request, tmp_path_factory) -> Stack:
    """The whole stack for tests/reliability, once on SQLite and once on PostgreSQL (a fresh database on the
    session's server), built by fleet/stack.py with this session's secrets."""
    root = tmp_path_factory.mktemp("reliability")
    database = "sqlite" if request.param == "sqlite" else request.getfixturevalue("postgres").create_database()
    built = Stack(StackSpec(root, servers=SERVERS, database=database, token=TOKEN, admin_key=ADMIN_KEY,
                            bucket=BUCKET, prefix=f"repo-{uuid.uuid4().hex[:8]}",
                            s3_keys=(S3_ACCESS_KEY, S3_SECRET_KEY),
                            settings={"max_upload_bytes": 2**20, "reconcile_interval_s": 0.5, "server_dead_after_s": 3,
                                      "pack_size": 8, "stub_probe_interval_s": 1}))
    # The fuzz tests leave a request hanging in a stub on purpose; the stack stops its servers without
    # waiting for Triton's graceful exit (not under test here).
    with built.start():
        built.register_servers(capacity_bytes=8 * 2**30)
        yield built


@pytest.fixture
def stack(stack_session: Stack) -> Stack:
    """The session's stack, whole: a server a test stopped or killed is started again and seen healthy by the
    control plane before the next test uses the stack, so no test depends on running after another."""
    restarted = []
    for name, server in stack_session.servers.items():
        if server.process is None or server.process.poll() is not None:
            server.start()  # the same ports: the control plane sees it recover
            restarted.append(name)
    for name in restarted:
        wait_for(lambda name=name: api(stack_session).get(url(stack_session, f"/servers/{name}")).json()["healthy"],
                 timeout_s=60, what=f"{name} healthy again")
    return stack_session


# ---- helpers shared by the test files -------------------------------------------------------------
def api(stack: Stack, token: str | None = TOKEN) -> requests.Session:
    return stack.api(token)


def url(stack: Stack, path: str) -> str:
    return f"{stack.url}/api/v1{path}"


def register(stack: Stack, entry, models_dir: Path, name: str | None = None, data: bytes | None = None,
             session: requests.Session | None = None) -> requests.Response:
    return stack.register(models_dir, entry, name=name, data=data, http=session, filename="model.pt")


def model(stack: Stack, name: str) -> dict | None:
    return stack.model(name)


def servable(stack: Stack, name: str) -> dict | None:
    return stack.servable(name)


def infer(grpc_url: str, pack: str, member: str, x: np.ndarray, dtype: str | None = None,
          timeout_s: float = 30.0) -> np.ndarray:
    """The member's OUTPUT__0 for INPUT__0 = x, from one server (fleet.client.infer_at)."""
    return infer_at(grpc_url, pack, {"INPUT__0": x}, member, datatypes={"INPUT__0": dtype} if dtype else None,
                    timeout_s=timeout_s).as_numpy("OUTPUT__0")


def sql(stack: Stack, statement: str, **params) -> list[tuple]:
    """Rows of a query on the stack's registry database, whichever backend it runs on."""
    engine = make_engine(stack.database_url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(statement), params)]
    finally:
        engine.dispose()


def kill_control_plane(stack: Stack) -> None:
    """SIGKILL the control plane and its validation workers (its own process group)."""
    stack.control_plane.kill()
