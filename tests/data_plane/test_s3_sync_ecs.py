"""On ECS a task's sync finds its own server name in the task metadata endpoint v4 and syncs only its share.

The metadata endpoint is a real HTTP server on loopback (deploy/ecs_metadata.py) answering the document
ECS documents for `${ECS_CONTAINER_METADATA_URI_V4}/task`; S3 is the session's SeaweedFS; the sync
commands are the ones the CloudFormation template gives the task's containers with SyncScope=assigned,
run as processes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.assignments import publish_assignment
from control_plane.settings import Settings
from deploy.ecs_metadata import PATH, TaskMetadataEndpoint
from deploy.ecs_task import task_containers
from model_repository.packing import build_repository
from model_repository.s3_sync import status_paths, upload
from model_repository.server_names import (
    METADATA_ENV,
    ServerNameError,
    ecs_server_name,
    ecs_server_name_from_metadata,
)

TASK_ID = "8f03e41243824aea923aca126495f665"
TASK_ARN = f"arn:aws:ecs:us-west-2:111122223333:task/default/{TASK_ID}"


@pytest.fixture
def metadata() -> Iterator[TaskMetadataEndpoint]:
    # Fields as in AWS's "Example task metadata response" (trimmed); TaskARN in the long format.
    endpoint = TaskMetadataEndpoint({"Cluster": "default", "TaskARN": TASK_ARN, "Family": "adfilter", "Revision": "7",
                                 "DesiredStatus": "RUNNING", "KnownStatus": "RUNNING",
                                 "Containers": [{"Name": "sync"}, {"Name": "triton"}]})
    yield endpoint
    endpoint.close()


@pytest.mark.parametrize("arn", [TASK_ARN, f"arn:aws:ecs:us-west-2:111122223333:task/{TASK_ID}",
                                 f"arn:aws-cn:ecs:cn-north-1:111122223333:task/my-cluster/{TASK_ID}"],
                         ids=["long-format", "old-format", "china-partition"])
def test_an_ecs_task_is_named_after_its_task_id_in_either_arn_format(arn):
    assert ecs_server_name(arn) == f"ecs-{TASK_ID}"


@pytest.mark.parametrize("arn", ["", TASK_ID, "arn:aws:ecs:us-west-2:111122223333:service/default/x",
                                 f"arn:aws:ecs:us-west-2:111122223333:task/a/b/{TASK_ID}"])
def test_something_that_is_not_a_task_arn_is_refused_with_the_expected_shape(arn):
    with pytest.raises(ServerNameError, match="not an ECS task ARN.*task/\\[CLUSTER/\\]TASK_ID"):
        ecs_server_name(arn)


def test_ecs_discovery_and_the_sync_derive_names_with_the_same_function():
    """The control plane publishes assignments under the discovered name; the sync reads its own. One
    function for both is what keeps them equal (a task whose names differ would never get its packs)."""
    import control_plane.discovery.ecs as discovery

    assert discovery.ecs_server_name is ecs_server_name
    assert discovery.EcsDiscoverer.prefix == "ecs-"


def test_the_server_name_comes_from_the_task_metadata_endpoint(metadata):
    assert ecs_server_name_from_metadata({METADATA_ENV: metadata.uri}) == f"ecs-{TASK_ID}"
    assert metadata.requests == [f"{PATH}/task"]
    assert ecs_server_name_from_metadata({METADATA_ENV: metadata.uri + "/"}) == f"ecs-{TASK_ID}"


def test_outside_ecs_the_error_says_to_pass_a_server_name():
    with pytest.raises(ServerNameError, match=f"{METADATA_ENV} is not set.*--server NAME"):
        ecs_server_name_from_metadata({})


def test_a_metadata_document_without_a_task_arn_or_an_error_answer_is_explained(metadata):
    metadata.document = {"Cluster": "default"}
    with pytest.raises(ServerNameError, match="no TaskARN field.*Cluster"):
        ecs_server_name_from_metadata({METADATA_ENV: metadata.uri})
    metadata.status = 500
    with pytest.raises(ServerNameError, match="cannot read the ECS task metadata at http://127.0.0.1:.*/task"):
        ecs_server_name_from_metadata({METADATA_ENV: metadata.uri})


def _assigned_init_sync_script(prefix: str, repository: Path) -> str:
    """The init-sync container's shell script from the template with SyncScope=assigned, for this prefix."""
    containers = task_containers("TritonTaskDefinition", {
        "ImageRegistry": "123456789012.dkr.ecr.us-east-1.amazonaws.com", "RepositoryBucket": "models",
        "RepositoryPrefix": prefix, "ResultsBucket": "results", "SyncScope": "assigned"})
    shell, flag, script = next(c for c in containers if c["Name"] == "init-sync")["Command"]
    assert (shell, flag) == ("/bin/sh", "-c")
    assert "/repository/models" in script
    return script.replace("/repository/models", str(repository))


def test_the_templates_assigned_init_sync_starts_empty_then_syncs_only_this_tasks_share(
        generated_models, seaweed, tmp_path, metadata):
    source = tmp_path / "source"
    build_repository(generated_models, source, pack_size=10)
    prefix = f"ecs-{uuid.uuid4().hex[:8]}"
    uri = f"s3://models/{prefix}"
    client = seaweed.client()
    upload(source, uri, client)
    repository = tmp_path / "volume" / "models"
    script = _assigned_init_sync_script(prefix, repository)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **seaweed.environment(), METADATA_ENV: metadata.uri,
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}

    def init_sync() -> subprocess.CompletedProcess:
        return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=120)

    # A new task: the control plane has not discovered it yet, so it has no assignment and starts empty.
    first = init_sync()
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"server ecs-{TASK_ID}" in first.stdout and "nothing to sync yet" in first.stdout
    assert not any(repository.iterdir())

    # Discovered and given one pack (another task gets another): this task holds exactly its own.
    settings = Settings(repository_uri=uri)
    publish_assignment(client, settings, f"ecs-{TASK_ID}", {"mlp-pack-0000": 1})
    publish_assignment(client, settings, "ecs-0123456789abcdef0123456789abcdef", {"cnn-pack-0000": 1})
    second = init_sync()
    assert second.returncode == 0, second.stdout + second.stderr
    assert sorted(p.name for p in repository.iterdir()) == ["mlp-pack-0000"]
    status = json.loads(status_paths(repository)[0].read_text())
    assert status["server"] == f"ecs-{TASK_ID}" and status["assigned_packs"] == ["mlp-pack-0000"]
