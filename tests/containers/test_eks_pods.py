"""The EKS pods, rendered from k8s/ with kustomize, started as the kubelet would start them, do their job.

The Triton pod (graviton overlay): the init sync fills the volume, the native sidecar keeps syncing,
Triton starts with its args and mounts (explicit mode, admin key) and loads `adfilter` when asked with
the key, as the control plane does. The control-plane pod: its readiness probe passes against S3 (the
bucket-level head request that IAM denied is not what /readyz makes any more). Images are the ones built
here (deploy.images); S3 is the session's SeaweedFS at the host's loopback.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from control_plane.assignments import publish_assignment
from control_plane.settings import Settings
from control_plane.targets.eks.manifests import K8S_ROOT, render
from deploy.ecs_task import HOST_FROM_TASK
from deploy.k8s_pod import PodRun
from fleet.seaweedfs import SeaweedS3
from model_repository.s3_sync import upload
from model_repository.triton_admin import TritonAdmin

pytestmark = pytest.mark.slow
ADMIN_KEY = "pod-test-admin-key"


def _platform(seaweed: SeaweedS3) -> dict[str, str]:
    """What IRSA and the VPC give a real pod: credentials, and here the S3 endpoint."""
    return {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key,
            "AWS_ENDPOINT_URL_S3": seaweed.endpoint_url.replace("127.0.0.1", HOST_FROM_TASK)}


def _workload(objects: list[dict], kind: tuple[str, ...], name: str) -> dict:
    return next(o for o in objects if o["kind"] in kind and o["metadata"]["name"] == name)


@pytest.fixture
def triton_pod(images, seaweed: SeaweedS3, fresh_prefix: str) -> Iterator[PodRun]:
    objects = render(K8S_ROOT / "overlays" / "graviton")
    pod = PodRun(_workload(objects, ("StatefulSet",), "triton-cpu"), objects,
                 secrets={("triton-admin-key", "key"): ADMIN_KEY},
                 config_overrides={("fleet-repository", "bucket"): "models",
                                   ("fleet-repository", "prefix"): fresh_prefix},
                 platform_env=_platform(seaweed))
    yield pod
    pod.stop()


def test_triton_pod_syncs_then_serves_adfilter_once_loaded_with_the_admin_key(
        triton_pod: PodRun, seaweed: SeaweedS3, adfilter_repository, fresh_prefix: str):
    upload(adfilter_repository, f"s3://models/{fresh_prefix}", seaweed.client())
    # What the control plane's leader does once discovery registers the pod and adfilter is placed on it:
    # the pod's syncs (--server eks-<pod name>) download only their assignment.
    publish_assignment(seaweed.client(), Settings(repository_uri=f"s3://models/{fresh_prefix}"),
                       f"eks-{triton_pod.pod_name}", {"adfilter": 1})
    triton_pod.start(init_timeout_s=180)
    assert triton_pod.started["model-sync-init"].exit_code() == 0
    assert triton_pod.started["model-sync"].running(), triton_pod.started["model-sync"].logs()
    triton_pod.wait_probe("triton", 120, kind="livenessProbe")
    http = f"http://127.0.0.1:{triton_pod.ports[8000]}"
    # explicit mode: nothing loads until the key holder asks
    assert TritonAdmin(http).load("adfilter", timeout_s=60).status in (400, 401, 403)
    loaded = TritonAdmin(http, ADMIN_KEY).load("adfilter", timeout_s=120)
    assert loaded.ok, (loaded.error, triton_pod.started["triton"].logs()[-2000:])
    triton_pod.wait_probe("triton", 30)  # readiness
    assert TritonAdmin(http).model_ready("adfilter", timeout_s=5)


@pytest.fixture
def control_plane_pod(images, seaweed: SeaweedS3, fresh_prefix: str) -> Iterator[PodRun]:
    objects = render(K8S_ROOT / "overlays" / "control-plane")
    workload = _workload(objects, ("StatefulSet", "Deployment"), "control-plane")
    pod = PodRun(workload, objects,
                 secrets={("triton-admin-key", "key"): ADMIN_KEY, ("fleet-api-token", "token"): "pod-test-token",
                          ("fleet-database", "url"): "sqlite:////data/registry.db"},
                 config_overrides={("fleet-repository", "bucket"): "models",
                                   ("fleet-repository", "prefix"): fresh_prefix},
                 platform_env=_platform(seaweed))
    yield pod
    pod.stop()


def test_control_plane_pod_becomes_ready(control_plane_pod: PodRun):
    control_plane_pod.start()
    control_plane_pod.wait_probe("control-plane", 120)
    url = f"http://127.0.0.1:{control_plane_pod.ports[8080]}"
    assert requests.get(f"{url}/readyz", timeout=5).json()["status"] == "ready"
    assert requests.get(f"{url}/api/v1/models", timeout=5,
                        headers={"Authorization": "Bearer pod-test-token"}).status_code == 200
