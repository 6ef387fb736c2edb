"""A fleet deployed onto an empty prefix becomes ready before any model is registered.

Servers sync what the repository index names and retry while there is none; only registrations wrote it,
so a first deploy (docs/eks.md step 7, before 7b) waited forever. The control plane now publishes an empty
index when the prefix has none. Real S3 (SeaweedFS), the real control plane and the real `fleet sync` CLI.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

from control_plane.app import create_app
from control_plane.repository import RepositoryBuilder
from control_plane.settings import Settings
from model_repository.s3_sync import INDEX_KEY, S3Location, upload


def fleet_sync(seaweed, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleet.cli", "sync", *args, "--interval", "0"],
                          env={**os.environ, **seaweed.environment(), "PYTHONSAFEPATH": "1"},
                          capture_output=True, text=True, timeout=120)


def test_the_control_plane_publishes_an_empty_index_that_every_kind_of_sync_accepts(seaweed, s3_uri, tmp_path,
                                                                                     monkeypatch):
    before = fleet_sync(seaweed, s3_uri, str(tmp_path / "early"))
    assert before.returncode != 0 and "no repository index" in before.stderr  # what a pod saw before

    for key, value in seaweed.environment().items():
        monkeypatch.setenv(key, value)
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'registry.db'}", repository_uri=s3_uri,
                              s3_endpoint_url=seaweed.endpoint_url, work_dir=tmp_path / "work",
                              validation_workers=1), start_reconciler=False)
    state = app.extensions["fleet"]
    try:
        state.reconciler.tick()
    finally:
        state.validator.close()
    location = S3Location.parse(s3_uri)
    index = json.loads(seaweed.client().get_object(Bucket=location.bucket, Key=location.key(INDEX_KEY))["Body"].read())
    assert index == {"format": 1, "files": {}}

    whole = fleet_sync(seaweed, s3_uri, str(tmp_path / "whole"))  # ECS SyncScope=whole, a plain server
    assert whole.returncode == 0, whole.stderr
    assert not any((tmp_path / "whole").iterdir())
    share = fleet_sync(seaweed, s3_uri, str(tmp_path / "share"), "--server", "eks-triton-cpu-0", "--allow-unassigned")
    assert share.returncode == 0 and "nothing to sync yet" in share.stdout, share.stdout + share.stderr


def test_the_empty_index_never_replaces_an_index_that_exists(seaweed, s3_uri, tmp_path):
    repository = tmp_path / "repository"
    (repository / "m" / "1").mkdir(parents=True)
    (repository / "m" / "config.pbtxt").write_text('name: "m"\n')
    (repository / "m" / "1" / "model.py").write_text("# a model\n")
    client = seaweed.client()
    upload(repository, s3_uri, client)  # `fleet upload` first (docs/eks.md step 5's alternative)
    builder = RepositoryBuilder(SimpleNamespace(s3=client, settings=Settings(repository_uri=s3_uri)))
    location = S3Location.parse(s3_uri)
    before = client.get_object(Bucket=location.bucket, Key=location.key(INDEX_KEY))["Body"].read()
    assert builder.ensure_index() is False
    assert client.get_object(Bucket=location.bucket, Key=location.key(INDEX_KEY))["Body"].read() == before
    assert set(json.loads(before)["files"]) == {"m/config.pbtxt", "m/1/model.py"}
