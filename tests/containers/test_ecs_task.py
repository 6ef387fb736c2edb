"""The ECS task definition of ecs/templates/adfilter-fleet.yaml, started as ECS would start it, serves adfilter.

Containers come from the template as written (image entry point + Command, DependsOn, shared volume,
environment, shm size) through deploy.ecs_task; S3 is the session's SeaweedFS, reached from the task's
network namespace at the host's loopback. This is the test that catches an image ENTRYPOINT that turns
the sync containers' Command into `tritonserver fleet sync ...`, and a `fleet sync` that needs
packages the server image does not carry.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from control_plane.assignments import publish_assignment
from control_plane.settings import Settings
from deploy.ecs_metadata import TaskMetadataEndpoint
from deploy.ecs_task import HOST_FROM_TASK, EcsTaskRun, task_containers
from deploy.images import version
from fleet.seaweedfs import SeaweedS3
from model_repository.s3_sync import upload
from model_repository.triton_admin import TritonAdmin, TritonAdminError

pytestmark = pytest.mark.slow
ADMIN_KEY = "container-test-admin-key"


def _wait(predicate, timeout_s: float, what: str, logs=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s:.0f}s; logs:\n{logs()}")


TASK_ID = "5d1e0c2b7a9f4e3c8b6a0f1e2d3c4b5a"


def _task(seaweed: SeaweedS3, prefix: str, scope: str, extra_env: dict[str, str] | None = None) -> EcsTaskRun:
    parameters = {"ImageRegistry": "localhost", "ImageTag": version(), "RepositoryBucket": "models",
                  "RepositoryPrefix": prefix, "ResultsBucket": "results", "SyncScope": scope,
                  # the CloudWatch agent image cannot be pulled here; its container is optional
                  "EnableMetricsSidecar": "false"}
    endpoint = seaweed.endpoint_url.replace("127.0.0.1", HOST_FROM_TASK)
    return EcsTaskRun(task_containers("TritonTaskDefinition", parameters), secrets={"TRITON_ADMIN_KEY": ADMIN_KEY},
                      platform_env={"AWS_ACCESS_KEY_ID": seaweed.access_key,
                                    "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_ENDPOINT_URL_S3": endpoint,
                                    **(extra_env or {})})


@pytest.fixture
def task(images, seaweed: SeaweedS3, fresh_prefix: str) -> Iterator[EcsTaskRun]:
    run = _task(seaweed, fresh_prefix, "whole")
    yield run
    run.stop()


@pytest.fixture
def assigned_task(images, seaweed: SeaweedS3, fresh_prefix: str) -> Iterator[EcsTaskRun]:
    """SyncScope=assigned, with the task metadata endpoint ECS would inject (a stand-in on the host)."""
    with TaskMetadataEndpoint({"Cluster": "adfilter-cluster", "TaskARN": "arn:aws:ecs:us-east-1:123456789012:task/"
                               f"adfilter-cluster/{TASK_ID}", "KnownStatus": "RUNNING"}) as metadata:
        run = _task(seaweed, fresh_prefix, "assigned",
                    {"ECS_CONTAINER_METADATA_URI_V4": metadata.uri_from(HOST_FROM_TASK)})
        yield run
        run.stop()


def test_task_waits_for_the_repository_then_triton_serves_adfilter(task: EcsTaskRun, seaweed: SeaweedS3,
                                                                    adfilter_repository, fresh_prefix: str,
                                                                    bid_request: bytes):
    assert [c["Name"] for c in task.containers] == ["init-sync", "sync", "triton"]
    task.start_network()
    init_sync = task.run_container(task.definition("init-sync"))
    # Nothing uploaded yet: the init sync says why and retries instead of failing the task.
    _wait(lambda: init_sync.logs().count("retrying in") >= 2, 60, "init-sync retried twice", init_sync.logs)
    logs = init_sync.logs()
    assert "no repository index" in logs and f"s3://models/{fresh_prefix}" in logs
    assert init_sync.running()

    upload(adfilter_repository, f"s3://models/{fresh_prefix}", seaweed.client())
    task.start(timeout_s=180)  # the rest, in DependsOn order: sync and triton after init-sync SUCCESS
    assert init_sync.exit_code() == 0
    triton = task.started["triton"]
    http = f"http://127.0.0.1:{task.ports[8000]}"
    _wait(lambda: TritonAdmin(http).model_ready("adfilter"), 180, "adfilter ready", triton.logs)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{task.ports[8001]}")
    tensor = grpcclient.InferInput("BID_REQUEST", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[bid_request]], dtype=object))
    result = client.infer("adfilter", [tensor])
    likelihood = float(result.as_numpy("LIKELIHOOD").ravel()[0])
    assert 0.0 <= likelihood <= 1.0
    client.close()
    # The sync sidecar keeps running beside Triton, and the repository API needs the admin key.
    assert task.started["sync"].running(), task.started["sync"].logs()
    with pytest.raises(TritonAdminError) as refused:
        TritonAdmin(http).index(ready_only=False, timeout_s=5)
    assert refused.value.status in (400, 401, 403)
    assert TritonAdmin(http, ADMIN_KEY).index(ready_only=False, timeout_s=5)


def test_an_assigned_task_starts_empty_then_serves_what_the_control_plane_placed_on_it(
        assigned_task: EcsTaskRun, seaweed: SeaweedS3, adfilter_repository, fresh_prefix: str, bid_request: bytes,
        tmp_path):
    task = assigned_task
    repository = tmp_path / "repository"  # adfilter, plus a model placed on another task
    shutil.copytree(adfilter_repository, repository)
    shutil.copytree(adfilter_repository / "adfilter", repository / "elsewhere")
    upload(repository, f"s3://models/{fresh_prefix}", seaweed.client())
    task.start_network()
    init_sync = task.run_container(task.definition("init-sync"))
    # Not discovered yet: no assignment, so the init sync exits 0 with nothing synced.
    _wait(lambda: init_sync.exit_code() is not None, 120, "init-sync finished", init_sync.logs)
    assert init_sync.exit_code() == 0, init_sync.logs()
    assert f"server ecs-{TASK_ID}" in init_sync.logs() and "nothing to sync yet" in init_sync.logs()
    # The control plane discovers the task as ecs-<task id> and places adfilter on it (as it would).
    publish_assignment(seaweed.client(), Settings(repository_uri=f"s3://models/{fresh_prefix}"), f"ecs-{TASK_ID}",
                       {"adfilter": 1})
    task.start(timeout_s=180)
    triton = task.started["triton"]
    triton_admin = TritonAdmin(f"http://127.0.0.1:{task.ports[8000]}", ADMIN_KEY)
    # Triton starts with nothing loaded and is ready (so the NLB, and ECS discovery, see the task).
    _wait(triton_admin.ready, 180, "triton ready while empty", triton.logs)
    assert not triton_admin.model_ready("adfilter")

    def synced_and_loaded() -> bool:  # the sync sidecar's first pass downloads the assignment
        return triton_admin.load("adfilter", timeout_s=60).ok

    _wait(synced_and_loaded, 120, "adfilter synced by the sidecar and loaded", task.started["sync"].logs)
    index = triton_admin.index(ready_only=False, timeout_s=5)
    assert [m.name for m in index] == ["adfilter"], "only this task's share is in its repository"
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{task.ports[8001]}")
    tensor = grpcclient.InferInput("BID_REQUEST", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[bid_request]], dtype=object))
    assert 0.0 <= float(client.infer("adfilter", [tensor]).as_numpy("LIKELIHOOD").ravel()[0]) <= 1.0
    client.close()
    assert f"server ecs-{TASK_ID}" in task.started["sync"].logs()
