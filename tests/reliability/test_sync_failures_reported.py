"""When a server's sync from S3 refuses a pack's files (corrupt or truncated objects) or cannot reach S3 at
all, the reconciler does not load a pack it could not update: the server keeps serving the last good copy,
and the problem is on the placement (`GET /api/v1/placements`, `error`) and in the audit log."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from control_plane.assignments import publish_assignment
from control_plane.db import AuditEntry, Pack, Placement, Server, make_engine, make_sessionmaker
from control_plane.migrate import upgrade
from control_plane.reconcile.loading import Loads
from control_plane.reconcile.workers import AdminClients, Workers
from control_plane.settings import Settings
from fleet.seaweedfs import SeaweedS3
from model_repository.packing import build_repository
from model_repository.s3_sync import INDEX_KEY, S3Location, local_index, sync, upload

pytestmark = pytest.mark.slow


def _fleet(tmp_path: Path, client, uri: str, generated_models: Path):
    """A registry with one server holding pack P loaded at generation 1, while S3 has generation 2."""
    repository = tmp_path / "built"
    plans = build_repository(generated_models, repository, pack_size=10)
    upload(repository, uri, client)
    server_repo = tmp_path / "server"
    sync(uri, server_repo, client)
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    pack = plans[0].name
    with sessions.begin() as session:
        session.add(Pack(name=pack, family="cpu", kind="mlp", generation=2, built_generation=2))
        # port 9 (discard): a repository call would fail and mark the placement "failed"
        session.add(Server(name="s1", family="cpu", http_url="http://127.0.0.1:9", grpc_url="127.0.0.1:9",
                           capacity_bytes=2**30, repository_path=str(server_repo)))
        session.flush()
        session.add(Placement(pack=pack, server="s1", state="loaded", loaded_generation=1))
    settings = Settings(repository_uri=uri, api_token="t", stub_probe_interval_s=0)
    loads = Loads(sessions, settings, client, AdminClients(None), Workers(2, "loads"))
    publish_assignment(client, settings, "s1", {pack: 2})  # what the leader publishes once P is placed on s1
    return loads, sessions, pack, server_repo


def _placement_and_audit(sessions, pack: str) -> tuple[Placement, list[AuditEntry]]:
    with sessions() as session:
        placement = session.get(Placement, (pack, "s1"))
        audit = session.scalars(select(AuditEntry).where(AuditEntry.subject == pack)).all()
        session.expunge_all()
    return placement, audit


def test_a_refused_pack_is_not_loaded_and_the_refusal_is_on_its_placement(
        seaweed, s3_uri, tmp_path, generated_models):
    client = seaweed.client()
    loads, sessions, pack, server_repo = _fleet(tmp_path, client, s3_uri, generated_models)
    good = local_index(server_repo)
    location = S3Location.parse(s3_uri)
    index = json.loads(client.get_object(Bucket=location.bucket, Key=location.key(INDEX_KEY))["Body"].read())
    index["files"][f"{pack}/1/members.json"]["sha256"] = "0" * 64  # the object no longer matches
    client.put_object(Bucket=location.bucket, Key=location.key(INDEX_KEY), Body=json.dumps(index).encode())

    loads.update()
    placement, audit = _placement_and_audit(sessions, pack)
    assert placement.state == "loaded" and placement.loaded_generation == 1, "still serving the last good copy"
    assert "sync refused, serving the last good version" in placement.error
    assert f"{pack}/1/members.json" in placement.error and "does not match" in placement.error
    assert [entry.action for entry in audit] == ["pack.sync_failed"]
    def of_pack(index: dict) -> dict:
        return {path: meta for path, meta in index.items() if path.startswith(f"{pack}/")}
    assert of_pack(local_index(server_repo)) == of_pack(good), "the refused pack keeps its last good copy"

    loads.update()  # the next tick tries again and does not repeat the audit entry
    assert [entry.action for entry in _placement_and_audit(sessions, pack)[1]] == ["pack.sync_failed"]


def test_an_unreachable_s3_is_on_every_placement_behind_and_nothing_is_loaded(tmp_path, generated_models):
    with SeaweedS3(tmp_path / "s3") as s3:
        s3.create_bucket("gone")
        client = s3.client()
        loads, sessions, pack, server_repo = _fleet(tmp_path, client, "s3://gone/repo", generated_models)
    good = local_index(server_repo)

    loads.update()
    placement, audit = _placement_and_audit(sessions, pack)
    assert placement.state == "loaded" and placement.loaded_generation == 1
    assert placement.error.startswith("sync failed, serving the last good version: cannot reach S3")
    assert [entry.action for entry in audit] == ["pack.sync_failed"]
    assert local_index(server_repo) == good
