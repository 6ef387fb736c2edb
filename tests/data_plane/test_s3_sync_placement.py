"""Placement-aware sync (`sync(..., server=NAME)`) against a real S3 server (SeaweedFS on loopback)."""
from __future__ import annotations

import hashlib
import json
import tracemalloc

import pytest

from control_plane.assignments import publish_assignment, read_server_assignment
from control_plane.settings import Settings
from model_repository import local_copy
from model_repository.packing import build_repository
from model_repository.s3_sync import INDEX_KEY, S3Location, SyncError, local_index, status_paths, sync, upload


@pytest.fixture
def repository(generated_models, tmp_path):
    build_repository(generated_models, tmp_path / "repo", pack_size=10)
    return tmp_path / "repo"


@pytest.fixture
def published(repository, seaweed, s3_uri):
    """The repository in S3, plus the settings the control plane would use for it."""
    client = seaweed.client()
    upload(repository, s3_uri, client)
    return client, Settings(repository_uri=s3_uri)


def pack_sizes(repository) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for relative, meta in local_index(repository).items():
        pack = relative.split("/", 1)[0]
        sizes[pack] = sizes.get(pack, 0) + meta["size"]
    return sizes


def test_a_server_holds_only_its_assigned_packs_and_drops_those_taken_away(repository, published, s3_uri,
                                                                          tmp_path):
    client, settings = published
    publish_assignment(client, settings, "triton-a", {"mlp-pack-0000": 1, "text-pack-0001": 1})
    publish_assignment(client, settings, "triton-b", {"cnn-pack-0000": 1})
    a = sync(s3_uri, tmp_path / "a", client, server="triton-a")
    b = sync(s3_uri, tmp_path / "b", client, server="triton-b")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["mlp-pack-0000", "text-pack-0001"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["cnn-pack-0000"]
    whole = local_index(repository)
    for server in ("a", "b"):
        held = local_index(tmp_path / server)
        assert held == {path: whole[path] for path in held}, "every file is byte-identical to the source"
    assert a.resident_bytes + b.resident_bytes < sum(meta["size"] for meta in whole.values())

    publish_assignment(client, settings, "triton-a", {"text-pack-0001": 2, "cnn-pack-0001": 1})
    again = sync(s3_uri, tmp_path / "a", client, server="triton-a")
    assert again.removed_models == {"mlp-pack-0000"} and again.changed_models == {"cnn-pack-0001"}
    assert again.hits == 1 and again.misses == 1, "text-pack-0001 was already complete on disk"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["cnn-pack-0001", "text-pack-0001"]


def test_assigned_packs_over_the_disk_budget_keep_the_most_recent_and_are_reported(repository, published,
                                                                                  s3_uri, tmp_path):
    client, settings = published
    sizes = pack_sizes(repository)
    first, second, third = sorted(["mlp-pack-0000", "cnn-pack-0000", "text-pack-0000"], key=sizes.get)
    budget = sizes[second] + sizes[third] + sizes[first] // 2  # room for any two, not for all three
    publish_assignment(client, settings, "s", {first: 1})
    sync(s3_uri, tmp_path / "s", client, server="s", disk_budget_bytes=budget, used_at={first: 1})
    publish_assignment(client, settings, "s", {first: 1, second: 1})
    sync(s3_uri, tmp_path / "s", client, server="s", disk_budget_bytes=budget, used_at={first: 1})
    # The third pack arrives last: the least recently assigned or used pack (the first) makes room.
    publish_assignment(client, settings, "s", {first: 1, second: 1, third: 1})
    report = sync(s3_uri, tmp_path / "s", client, server="s", disk_budget_bytes=budget, used_at={first: 1})
    assert report.over_budget_packs == [first] and report.evicted_packs == [first]
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted([second, third])
    assert report.resident_bytes == sizes[second] + sizes[third] <= budget

    status_json, metrics = status_paths(tmp_path / "s")
    status = json.loads(status_json.read_text())
    assert status["server"] == "s" and status["budget_bytes"] == budget
    assert status["over_budget_packs"] == [first] and status["totals"]["evictions"] == 1
    assert status["totals"]["misses"] == 3 and status["totals"]["hits"] == 2
    text = metrics.read_text()
    assert f'fleet_sync_resident_bytes{{server="s"}} {report.resident_bytes}' in text
    assert 'fleet_sync_evictions_total{server="s"} 1' in text
    assert 'fleet_sync_over_budget_packs{server="s"} 1' in text

    # A request for the evicted pack makes it the most recently used: it comes back, another one leaves.
    report = sync(s3_uri, tmp_path / "s", client, server="s", disk_budget_bytes=budget,
                  used_at={first: 4_000_000_000})
    assert first in {p.name for p in (tmp_path / "s").iterdir()} and len(report.evicted_packs) == 1


def test_a_server_without_an_assignment_is_told_why_and_nothing_changes(published, s3_uri, tmp_path):
    client, settings = published
    with pytest.raises(SyncError, match="no assignment for server 'new-server'.*publishes it once"):
        sync(s3_uri, tmp_path / "new", client, server="new-server")
    assert read_server_assignment(client, settings, "new-server") is None
    assert not any((tmp_path / "new").iterdir())


def test_a_pack_not_yet_in_the_index_is_reported_missing_and_the_rest_syncs(published, s3_uri, tmp_path):
    client, settings = published
    publish_assignment(client, settings, "s", {"mlp-pack-0000": 1, "not-built-yet": 1})
    report = sync(s3_uri, tmp_path / "s", client, server="s")
    assert report.ok and report.missing_packs == ["not-built-yet"]
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["mlp-pack-0000"]


def test_files_are_hashed_once_at_download_not_at_every_sync(published, s3_uri, tmp_path, monkeypatch):
    client, settings = published
    publish_assignment(client, settings, "s", {"mlp-pack-0000": 1, "cnn-pack-0000": 1})
    sync(s3_uri, tmp_path / "s", client, server="s")
    hashed = []
    real = local_copy.file_sha256  # where the sync's local index hashes files (model_repository/local_copy.py)
    monkeypatch.setattr(local_copy, "file_sha256", lambda path: hashed.append(path) or real(path))
    again = sync(s3_uri, tmp_path / "s", client, server="s")
    assert again.downloaded == [] and hashed == []
    # A file changed behind the sync's back (other size or mtime) is hashed again and repaired.
    victim = next((tmp_path / "s" / "mlp-pack-0000" / "1" / "members").iterdir())
    victim.write_bytes(b"damaged")
    repaired = sync(s3_uri, tmp_path / "s", client, server="s")
    assert hashed == [victim] and repaired.downloaded == [victim.relative_to(tmp_path / "s").as_posix()]


def test_a_large_object_streams_to_disk_with_bounded_memory(seaweed, s3_uri, tmp_path):
    """With the default settings an object is hashed while it is written, one chunk at a time: memory stays
    far below its size (an earlier version passed this test only with a hand-tuned transfer config and
    held ~400 MiB for a 417 MiB member by default)."""
    client = seaweed.client()
    location = S3Location.parse(s3_uri)
    data = hashlib.sha256(b"seed").digest() * (48 * 2**20 // 32)  # 48 MiB
    client.put_object(Bucket=location.bucket, Key=location.key("big-pack/1/members/m.pt"), Body=data)
    index = {"big-pack/1/members/m.pt": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
    client.put_object(Bucket=location.bucket, Key=location.key(INDEX_KEY),
                      Body=json.dumps({"format": 1, "files": index}).encode())
    del data
    tracemalloc.start()
    try:
        report = sync(s3_uri, tmp_path / "s", client)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.bytes == 48 * 2**20
    assert local_index(tmp_path / "s") == {p: {"sha256": m["sha256"], "size": m["size"]} for p, m in index.items()}
    assert peak < 8 * 2**20, f"peak Python memory {peak / 2**20:.1f} MiB for a 48 MiB object"


def test_the_sync_loop_explains_a_missing_index_retries_and_recovers(repository, seaweed, s3_uri, tmp_path):
    """`fleet sync --interval --server`: a repository not yet uploaded is a clear, retried log line, not a
    crash loop; once the index and the assignment appear the server takes its share; SIGTERM ends it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    log = tmp_path / "sync.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleet.cli", "sync", s3_uri, str(tmp_path / "s"), "--interval", "0.5",
             "--server", "s"], env={**os.environ, **seaweed.environment()}, stdout=out, stderr=subprocess.STDOUT)
    try:
        def wait_for(predicate, what: str, timeout_s: float = 60) -> None:
            deadline = time.monotonic() + timeout_s
            while not predicate():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"{what}; log:\n{log.read_text()}"
                time.sleep(0.2)

        wait_for(lambda: "sync failed (attempt 2), retrying" in log.read_text(), "no retry line")
        assert "no repository index" in log.read_text() and "run `fleet upload` first" in log.read_text()
        client = seaweed.client()
        upload(repository, s3_uri, client)
        publish_assignment(client, Settings(repository_uri=s3_uri), "s", {"cnn-pack-0001": 1})
        wait_for(lambda: (tmp_path / "s" / "cnn-pack-0001" / "config.pbtxt").exists(), "the pack never arrived")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["cnn-pack-0001"]


def test_an_init_pass_of_a_server_not_yet_assigned_succeeds_only_when_allowed(published, seaweed, s3_uri, tmp_path):
    """The init container of a pod that discovery has not registered yet must not block the pod."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "fleet.cli", "sync", s3_uri, str(tmp_path / "s"), "--server", "eks-new-0"]
    env = {**os.environ, **seaweed.environment()}
    strict = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert strict.returncode == 1 and "no assignment for server 'eks-new-0'" in strict.stderr
    allowed = subprocess.run([*command, "--allow-unassigned"], env=env, capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0 and "nothing to sync yet" in allowed.stdout
