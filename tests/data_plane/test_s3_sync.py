"""`fleet upload` / `fleet sync` against a real S3 server (SeaweedFS on loopback)."""
from __future__ import annotations

import json

import pytest

from model_repository.packing import build_repository
from model_repository.s3_sync import INDEX_KEY, S3Location, SyncError, local_index, sync, upload


def rewrite(path, data: bytes) -> None:
    """New content for a repository file. Packs hard-link the generated artifacts, so writing in place
    would also change the session's shared generated models: replace the link instead."""
    path.unlink()
    path.write_bytes(data)


@pytest.fixture
def repository(generated_models, tmp_path):
    build_repository(generated_models, tmp_path / "repo", pack_size=10)
    return tmp_path / "repo"


def test_a_synced_server_holds_exactly_the_uploaded_files(repository, seaweed, s3_uri, tmp_path):
    client = seaweed.client()
    uploaded = upload(repository, s3_uri, client)
    assert len(uploaded) == len(local_index(repository))
    report = sync(s3_uri, tmp_path / "server", client)
    assert report.ok and report.changed_models == {p.name for p in repository.iterdir()}
    assert local_index(tmp_path / "server") == local_index(repository)


def test_nothing_moves_when_nothing_changed(repository, seaweed, s3_uri, tmp_path):
    client = seaweed.client()
    upload(repository, s3_uri, client)
    sync(s3_uri, tmp_path / "server", client)
    assert upload(repository, s3_uri, client) == []
    again = sync(s3_uri, tmp_path / "server", client)
    assert again.downloaded == [] and again.changed_models == set()


def test_a_changed_member_moves_alone_and_a_deleted_pack_disappears(repository, seaweed, s3_uri, tmp_path):
    client = seaweed.client()
    upload(repository, s3_uri, client)
    sync(s3_uri, tmp_path / "server", client)
    member = next((repository / "mlp-pack-0000" / "1" / "members").iterdir())
    rewrite(member, member.read_bytes() + b"\0")  # any new content
    gone = repository / "text-pack-0001"
    for path in sorted(gone.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    gone.rmdir()
    assert upload(repository, s3_uri, client) == [f"mlp-pack-0000/1/members/{member.name}"]
    report = sync(s3_uri, tmp_path / "server", client)
    assert report.downloaded == [f"mlp-pack-0000/1/members/{member.name}"]
    assert report.changed_models == {"mlp-pack-0000"} and report.removed_models == {"text-pack-0001"}
    assert not (tmp_path / "server" / "text-pack-0001").exists()


def test_a_corrupt_object_is_refused_and_its_model_keeps_the_last_good_version(
        repository, seaweed, s3_uri, tmp_path):
    client = seaweed.client()
    location = S3Location.parse(s3_uri)
    upload(repository, s3_uri, client)
    sync(s3_uri, tmp_path / "server", client)
    good = (tmp_path / "server" / "cnn-pack-0000" / "1" / "members.json").read_bytes()
    # The index announces new content, but the object in S3 is corrupt (e.g. a truncated write).
    index = json.loads(client.get_object(Bucket=location.bucket, Key=location.key(INDEX_KEY))["Body"].read())
    index["files"]["cnn-pack-0000/1/members.json"]["sha256"] = "0" * 64
    client.put_object(Bucket=location.bucket, Key=location.key(INDEX_KEY), Body=json.dumps(index).encode())
    report = sync(s3_uri, tmp_path / "server", client)
    assert not report.ok
    assert "does not match" in report.refused["cnn-pack-0000/1/members.json"]
    assert (tmp_path / "server" / "cnn-pack-0000" / "1" / "members.json").read_bytes() == good


def test_sync_without_an_index_says_to_upload_first(seaweed, s3_uri, tmp_path):
    with pytest.raises(SyncError, match="run `fleet upload` first"):
        sync(s3_uri, tmp_path / "server", seaweed.client())


def test_wrong_credentials_are_explained(repository, seaweed, s3_uri):
    import boto3

    intruder = boto3.client("s3", endpoint_url=seaweed.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="nobody", aws_secret_access_key="wrong")
    with pytest.raises(SyncError, match="denied"):
        upload(repository, s3_uri, intruder)


@pytest.mark.parametrize("uri", ["models/prefix", "http://bucket/prefix", "s3:///prefix"])
def test_a_uri_that_is_not_s3_is_rejected(uri):
    with pytest.raises(SyncError, match="not an S3 URI"):
        S3Location.parse(uri)


def test_a_truncated_object_is_refused_and_its_model_keeps_the_last_good_version(
        repository, seaweed, s3_uri, tmp_path):
    client = seaweed.client()
    location = S3Location.parse(s3_uri)
    upload(repository, s3_uri, client)
    sync(s3_uri, tmp_path / "server", client)
    member = next((repository / "mlp-pack-0000" / "1" / "members").iterdir())
    relative = f"mlp-pack-0000/1/members/{member.name}"
    good = (tmp_path / "server" / relative).read_bytes()
    rewrite(member, good + b"new weights")
    upload(repository, s3_uri, client)
    # The upload of the new object was cut short: S3 holds its first half, the index the full file's sha256.
    client.put_object(Bucket=location.bucket, Key=location.key(relative), Body=member.read_bytes()[:len(good) // 2])
    report = sync(s3_uri, tmp_path / "server", client)
    assert "does not match" in report.refused[relative] and "partially written" in report.refused[relative]
    assert "mlp-pack-0000" not in report.changed_models
    assert (tmp_path / "server" / relative).read_bytes() == good


def test_an_s3_outage_during_sync_leaves_every_model_whole(generated_models, tmp_path):
    """S3 dies after the first file of a sync arrives: the models it could not finish keep their last good
    version (no half-written model), and the next sync against a dead endpoint says what is wrong."""
    from fleet.seaweedfs import SeaweedS3

    repository = tmp_path / "repo"
    build_repository(generated_models, repository, pack_size=10)
    with SeaweedS3(tmp_path / "s3") as s3:
        s3.create_bucket("outage")
        client, uri = s3.client(), "s3://outage/repo"
        upload(repository, uri, client)
        sync(uri, tmp_path / "server", client)
        before = local_index(tmp_path / "server")
        for member in sorted(repository.glob("*-pack-*/1/members/*"))[:12]:
            rewrite(member, member.read_bytes() + b"v2")
        changed = upload(repository, uri, client)
        assert len(changed) == 12

        def stop_s3_after_the_first_file(_bytes: int) -> None:
            s3.stop()

        report = sync(uri, tmp_path / "server", client, on_progress=stop_s3_after_the_first_file)
    assert not report.ok and report.refused, "files that could not be fetched are reported"
    after = local_index(tmp_path / "server")
    assert set(after) == set(before), "no file appeared or vanished"
    for model in {path.split("/", 1)[0] for path in before}:
        files = [path for path in before if path.startswith(f"{model}/")]
        updated = [path for path in files if after[path]["sha256"] != before[path]["sha256"]]
        if model in report.changed_models:
            assert set(updated) == {p for p in changed if p.startswith(f"{model}/")}, f"{model} is whole"
        else:
            assert updated == [], f"{model} keeps its last good version"
    with pytest.raises(SyncError, match="cannot reach S3 .* nothing was changed locally"):
        sync(uri, tmp_path / "server", client)
    assert local_index(tmp_path / "server") == after
