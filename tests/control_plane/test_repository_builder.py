"""The control plane builds packs straight into S3 (real SeaweedFS, real SQLite registry): no local copy,
members copied server-side, the index merged per pack so concurrent writers never erase each other."""
from __future__ import annotations

import json
import threading

import pytest

from control_plane.db import Model, ModelVersion, Pack, make_engine, make_sessionmaker
from control_plane.migrate import upgrade
from control_plane.registry import Registry
from control_plane.repository import RepositoryBuilder
from control_plane.settings import Settings
from model_repository.manifest import Manifest
from model_repository.packing import RUNTIME_FILES
from model_repository.s3_sync import INDEX_KEY, S3Location, local_index, sync


@pytest.fixture
def registry(seaweed, s3_uri, tmp_path, generated_models):
    """A registry whose first 12 generated models are registered (artifacts in S3), in 4 packs of 3."""
    settings = Settings(repository_uri=s3_uri, database_url=f"sqlite:///{tmp_path / 'registry.db'}",
                        work_dir=tmp_path / "work")
    engine = make_engine(settings.database_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    client = seaweed.client()
    registry = Registry(sessions, settings, client, validator=None)
    models = Manifest.read(generated_models).models[:12]
    with sessions.begin() as session:
        for k, entry in enumerate(models):
            pack = f"pack-{k // 3}"
            if session.get(Pack, pack) is None:
                session.add(Pack(name=pack, family="cpu", kind=entry.architecture, generation=1))
                session.flush()
            key = registry.artifact_key(entry.id, entry.sha256)
            client.put_object(Bucket=settings.bucket, Key=key, Body=(generated_models / entry.file).read_bytes())
            session.add(Model(name=entry.id, pack=pack))
            session.flush()
            session.add(ModelVersion(model=entry.id, version=1, sha256=entry.sha256, bytes=entry.bytes, s3_key=key,
                                     pack_kind=entry.architecture,
                                     signature={"inputs": [i.model_dump(mode="json") for i in entry.inputs],
                                                "outputs": [o.model_dump(mode="json") for o in entry.outputs]}))
    registry.models = models
    return registry


def build(registry: Registry, *packs: str) -> dict[str, int]:
    builder = RepositoryBuilder(registry)
    with registry.sessions.begin() as session:
        return {name: builder.build(session, session.get(Pack, name)) for name in packs}


def index(registry: Registry) -> dict[str, dict]:
    location = S3Location.parse(registry.settings.repository_uri)
    body = registry.s3.get_object(Bucket=location.bucket, Key=location.key(INDEX_KEY))["Body"].read()
    return json.loads(body)["files"]


def test_a_pack_is_built_in_s3_without_a_local_copy_and_a_server_syncs_it_whole(registry, generated_models,
                                                                              tmp_path):
    assert build(registry, "pack-0") == {"pack-0": 3}
    assert not (tmp_path / "work").exists(), "the control plane wrote nothing locally"
    server = tmp_path / "server"
    report = sync(registry.settings.repository_uri, server, registry.s3)
    assert report.ok and report.changed_models == {"pack-0"}
    members = json.loads((server / "pack-0" / "1" / "members.json").read_text())
    assert members["generation"] == 1
    for entry in registry.models[:3]:
        member = members["members"][entry.id]
        assert member["file"] == f"members/{entry.id}.pt" and member["format"] == "torchscript"
        assert (server / "pack-0" / "1" / member["file"]).read_bytes() == (generated_models / entry.file).read_bytes()
    assert {p.relative_to(server / "pack-0").as_posix() for p in (server / "pack-0").rglob("*") if p.is_file()} \
        == {"config.pbtxt", "configs/gpu.pbtxt", "configs/inf2.pbtxt", *(f"1/{f}" for f in RUNTIME_FILES),
            "1/members.json",
            *(f"1/members/{e.id}.pt" for e in registry.models[:3])}


def test_control_plane_replicas_building_at_once_never_erase_each_others_index_entries(registry):
    errors = []

    def replica(packs: list[str]) -> None:
        try:
            for pack in packs:
                build(registry, pack)
        except Exception as error:  # noqa: BLE001  reported below
            errors.append(error)

    threads = [threading.Thread(target=replica, args=(packs,)) for packs in (["pack-0", "pack-2"],
                                                                             ["pack-1", "pack-3"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert {path.split("/", 1)[0] for path in index(registry)} == {"pack-0", "pack-1", "pack-2", "pack-3"}


def test_a_member_that_leaves_is_deleted_from_its_pack_only_after_the_index_drops_it(registry, tmp_path):
    build(registry, "pack-0", "pack-1")
    leaving = registry.models[0].id
    with registry.sessions.begin() as session:
        session.get(Model, leaving).desired = "unloaded"
        session.get(Pack, "pack-0").generation = 2
    assert build(registry, "pack-0") == {"pack-0": 2}
    files = index(registry)
    assert f"pack-0/1/members/{leaving}.pt" not in files
    # another pack's entries are untouched: 3 members, 3 configs, members.json and the runtime's files
    assert sum(path.startswith("pack-1/") for path in files) == 7 + len(RUNTIME_FILES), "another pack's entries"
    location = S3Location.parse(registry.settings.repository_uri)
    keys = {o["Key"] for o in registry.s3.list_objects_v2(Bucket=location.bucket, Prefix=location.key("pack-0/"))
            .get("Contents", [])}
    assert keys == {location.key(path) for path in files if path.startswith("pack-0/")}
    sync(registry.settings.repository_uri, tmp_path / "server", registry.s3)
    assert set(local_index(tmp_path / "server")) == set(files)


def test_a_pack_left_without_members_disappears_from_s3(registry):
    build(registry, "pack-0", "pack-3")
    with registry.sessions.begin() as session:
        for model in session.query(Model).filter(Model.pack == "pack-3"):
            model.desired = "unloaded"
    assert build(registry, "pack-3") == {"pack-3": 0}
    assert {path.split("/", 1)[0] for path in index(registry)} == {"pack-0"}
    location = S3Location.parse(registry.settings.repository_uri)
    assert "Contents" not in registry.s3.list_objects_v2(Bucket=location.bucket, Prefix=location.key("pack-3/"))


def index_calls(registry: Registry, operation: str) -> list[str]:
    """Records each `operation` (GetObject, PutObject) the registry's S3 client sends for the index key."""
    location = S3Location.parse(registry.settings.repository_uri)
    calls: list[str] = []

    def record(params, **_):
        if params.get("Key") == location.key(INDEX_KEY):
            calls.append(operation)
    registry.s3.meta.events.register(f"before-parameter-build.s3.{operation}", record)
    return calls


def test_a_build_reads_the_index_once_when_no_other_writer_changes_it(registry):
    build(registry, "pack-0")
    reads = index_calls(registry, "GetObject")
    build(registry, "pack-1")
    assert reads == ["GetObject"], "the index (~2 MB at 10,000 models) is read once per build, not twice"


def test_an_index_another_writer_changed_after_the_build_read_it_is_read_again_not_overwritten(registry, seaweed):
    build(registry, "pack-0")
    location = S3Location.parse(registry.settings.repository_uri)
    other = seaweed.client()
    foreign = {"format": 1, "files": {**index(registry), "pack-9/config.pbtxt": {"sha256": "0" * 64, "size": 1}}}
    reads = index_calls(registry, "GetObject")

    def another_writer(params, **_):  # lands between the build's read and its conditional write, once
        if params.get("Key") == location.key(INDEX_KEY) and not foreign.get("written"):
            other.put_object(Bucket=location.bucket, Key=location.key(INDEX_KEY),
                             Body=json.dumps({k: v for k, v in foreign.items() if k != "written"}).encode())
            foreign["written"] = True
    registry.s3.meta.events.register("before-parameter-build.s3.PutObject", another_writer)
    build(registry, "pack-1")
    assert foreign.get("written") and reads == ["GetObject", "GetObject"], "the refused write was retried on a re-read"
    assert {path.split("/", 1)[0] for path in index(registry)} == {"pack-0", "pack-1", "pack-9"}
