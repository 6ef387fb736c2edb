"""Real control planes (waitress, SeaweedFS, and SQLite or PostgreSQL: every module of the shared `stack`
runs on both) in front of real tritonservers, built by fleet/stack.py as `fleet up` and the benchmarks
build theirs. Besides the all-scopes bootstrap token, the shared stack has one token per scope in a tokens
file (SCOPED_TOKENS), so tests can prove what each scope may and may not do."""
from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from fleet.seaweedfs import SeaweedS3
from fleet.stack import Stack, StackSpec

ADMIN_KEY = "cp-test-admin-key"
TOKEN = "cp-test-token"
SCOPED_TOKENS = {scope: f"cp-test-{scope}-{uuid.uuid4().hex}" for scope in ("admin", "write", "read", "loadtest")}


def write_tokens_file(path: Path, tokens: dict[str, str]) -> Path:
    """A FLEET_TOKENS_FILE granting each token (value) the scope named by its key; only hashes are written."""
    path.write_text(json.dumps({"tokens": [{"name": scope, "sha256": hashlib.sha256(token.encode()).hexdigest(),
                                            "scopes": [scope]} for scope, token in tokens.items()]}))
    return path


def stack_on(root: Path, seaweed: SeaweedS3, prefix: str, servers: tuple[str, ...] = ("triton-a", "triton-b"),
             database: str = "sqlite", control_planes: int = 1, **settings: object) -> Stack:
    """A stack (not started) on the session's SeaweedFS under a fresh prefix of its bucket, with the tests'
    token and admin key and a 0.5 s reconcile interval; `settings` are further control-plane settings."""
    return Stack(StackSpec(root, servers=servers, database=database, control_planes=control_planes, token=TOKEN,
                           admin_key=ADMIN_KEY, bucket="models", prefix=f"{prefix}-{uuid.uuid4().hex[:8]}",
                           settings={"reconcile_interval_s": 0.5, **settings}), s3=seaweed)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, seaweed, database_url):
    """SeaweedFS + two tritonservers + the control plane; the servers are registered through the API."""
    root = tmp_path_factory.mktemp("cp")
    built = stack_on(root, seaweed, "cp", database=database_url, server_dead_after_s=3, pack_size=10,
                     max_upload_bytes=2**20, tokens_file=write_tokens_file(root / "tokens.json", SCOPED_TOKENS))
    with built.start():
        built.register_servers(capacity_bytes=8 * 2**30)
        yield built
