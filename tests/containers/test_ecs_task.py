"""The ECS task definition of ecs/templates/adfilter-fleet.yaml, started as ECS would start it, serves adfilter.

Containers come from the template as written (image entry point + Command, DependsOn, shared volume,
environment, shm size) through deploy.ecs_task; S3 is the session's SeaweedFS, reached from the task's
network namespace at the host's loopback. This is the test that catches an image ENTRYPOINT that turns
the sync containers' Command into `tritonserver fleet sync ...`, and a `fleet sync` that needs
packages the server image does not carry.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from deploy.ecs_task import HOST_FROM_TASK, EcsTaskRun, task_containers
from deploy.images import version
from fleet.seaweedfs import SeaweedS3
from model_repository.s3_sync import upload

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


@pytest.fixture
def task(images, seaweed: SeaweedS3, fresh_prefix: str) -> Iterator[EcsTaskRun]:
    parameters = {"ImageRegistry": "localhost", "ImageTag": version(), "RepositoryBucket": "models",
                  "RepositoryPrefix": fresh_prefix, "ResultsBucket": "results",
                  # the CloudWatch agent image cannot be pulled here; its container is optional
                  "EnableMetricsSidecar": "false"}
    endpoint = seaweed.endpoint_url.replace("127.0.0.1", HOST_FROM_TASK)
    run = EcsTaskRun(task_containers("TritonTaskDefinition", parameters), secrets={"TRITON_ADMIN_KEY": ADMIN_KEY},
                     platform_env={"AWS_ACCESS_KEY_ID": seaweed.access_key,
                                   "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_ENDPOINT_URL_S3": endpoint})
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

    def ready() -> bool:
        try:
            return requests.get(f"{http}/v2/models/adfilter/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    _wait(ready, 180, "adfilter ready", triton.logs)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{task.ports[8001]}")
    tensor = grpcclient.InferInput("BID_REQUEST", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[bid_request]], dtype=object))
    result = client.infer("adfilter", [tensor])
    likelihood = float(result.as_numpy("LIKELIHOOD").ravel()[0])
    assert 0.0 <= likelihood <= 1.0
    client.close()
    # The sync sidecar keeps running beside Triton, and the repository API needs the admin key.
    assert task.started["sync"].running(), task.started["sync"].logs()
    assert requests.post(f"{http}/v2/repository/index", json={}, timeout=5).status_code in (400, 401, 403)
    assert requests.post(f"{http}/v2/repository/index", json={}, timeout=5,
                         headers={"triton-admin-key": ADMIN_KEY}).status_code == 200
