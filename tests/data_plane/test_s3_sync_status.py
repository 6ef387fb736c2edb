"""A server's sync publishes its status to S3, where the control plane reads it as the disk tier.

Against real S3 servers (SeaweedFS on loopback): the session's, and one whose second identity may only
read, as a server role without the status grant would be.
"""
from __future__ import annotations

import json
import logging

import boto3
import pytest
from click.testing import CliRunner

from control_plane.assignments import disk_tier, publish_assignment, read_sync_status
from control_plane.settings import Settings
from fleet.cli import main
from fleet.seaweedfs import SeaweedS3
from model_repository.packing import build_repository
from model_repository.s3_sync import S3Location, status_key, status_paths, sync, upload

SERVER = "ecs-0123456789abcdef"


@pytest.fixture
def published(generated_models, seaweed, s3_uri, tmp_path):
    """A packed repository in S3 and an assignment of two packs to SERVER."""
    build_repository(generated_models, tmp_path / "source", pack_size=10)
    client = seaweed.client()
    upload(tmp_path / "source", s3_uri, client)
    settings = Settings(repository_uri=s3_uri)
    publish_assignment(client, settings, SERVER, {"mlp-pack-0000": 1, "cnn-pack-0000": 1})
    return client, settings


def test_each_pass_publishes_the_status_document_next_to_the_assignment(published, s3_uri, tmp_path):
    client, settings = published
    first = sync(s3_uri, tmp_path / "repo", client, server=SERVER, publish_status=True)
    assert first.status_published
    stored = read_sync_status(client, settings, SERVER)
    assert stored == json.loads(status_paths(tmp_path / "repo")[0].read_text()), "the same document as the file"
    assert stored["server"] == SERVER and stored["resident_packs"] == 2
    assert stored["resident_bytes"] == first.resident_bytes > 0
    assert stored["totals"]["misses"] == 2 and stored["totals"]["hits"] == 0

    publish_assignment(client, settings, SERVER, {"mlp-pack-0000": 1})
    second = sync(s3_uri, tmp_path / "repo", client, server=SERVER, publish_status=True, disk_budget_bytes=10**9)
    again = read_sync_status(client, settings, SERVER)
    assert again["updated_at"] > stored["updated_at"] and again["resident_packs"] == 1
    assert again["resident_bytes"] == second.resident_bytes < first.resident_bytes
    assert disk_tier(again) == {"resident_bytes": second.resident_bytes, "resident_members": 1,
                                "budget_bytes": 10**9, "hits": 1, "misses": 2, "evictions": 0, "loads": 2,
                                "load_seconds": again["totals"]["fill_seconds"]}


def test_a_sync_without_a_server_name_or_without_the_flag_publishes_nothing(published, s3_uri, tmp_path):
    client, settings = published
    assert not sync(s3_uri, tmp_path / "mine", client, server=SERVER).status_published
    assert not sync(s3_uri, tmp_path / "whole", client, publish_status=True).status_published
    assert read_sync_status(client, settings, SERVER) is None, "a missing status reads as None, not an error"


def test_fleet_sync_with_a_server_name_publishes_its_status(published, seaweed, s3_uri, tmp_path):
    client, settings = published
    result = CliRunner().invoke(main, ["sync", s3_uri, str(tmp_path / "repo"), "--server", SERVER],
                                env=seaweed.environment())
    assert result.exit_code == 0, result.output
    assert read_sync_status(client, settings, SERVER)["resident_packs"] == 2


class ReadOnlySecondIdentity(SeaweedS3):
    """SeaweedFS with the usual admin identity plus `reader`, which may only read and list."""

    def command(self) -> list[str]:
        command = super().command()
        config = self.data_dir / "s3.json"
        identities = json.loads(config.read_text())["identities"]
        identities.append({"name": "reader", "credentials": [{"accessKey": "reader", "secretKey": "reader-secret"}],
                           "actions": ["Read", "List"]})
        config.write_text(json.dumps({"identities": identities}))
        return command


@pytest.mark.slow  # starts its own SeaweedFS with a second, read-only identity
def test_a_role_that_cannot_write_the_status_still_syncs_every_pack(generated_models, tmp_path, caplog):
    build_repository(generated_models, tmp_path / "source", pack_size=10)
    with ReadOnlySecondIdentity(tmp_path / "s3") as s3:
        s3.create_bucket("models")
        admin = s3.client()
        upload(tmp_path / "source", "s3://models/fleet", admin)
        publish_assignment(admin, Settings(repository_uri="s3://models/fleet"), SERVER, {"text-pack-0000": 1})
        reader = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1",
                              aws_access_key_id="reader", aws_secret_access_key="reader-secret")
        with caplog.at_level(logging.WARNING, logger="model_repository.s3_sync"):
            report = sync("s3://models/fleet", tmp_path / "repo", reader, server=SERVER, publish_status=True)
        assert report.ok and not report.status_published
        assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["text-pack-0000"]
        assert json.loads(status_paths(tmp_path / "repo")[0].read_text())["resident_packs"] == 1
        key = S3Location.parse("s3://models/fleet").key(status_key(SERVER))
        assert f"cannot publish the sync status of server {SERVER} to s3://models/{key}" in caplog.text
        assert "AccessDenied" in caplog.text and "s3:PutObject" in caplog.text
        assert read_sync_status(admin, Settings(repository_uri="s3://models/fleet"), SERVER) is None
