"""How the EKS target tailors the rendered manifests to a DeploymentSpec or a LoadTestSpec."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from control_plane.targets.base import DeploymentSpec, LoadTestSpec, TargetError
from control_plane.targets.eks.manifests import (
    REPOSITORY_CHECKSUM,
    ROLE_ARN_ANNOTATION,
    Roles,
    deployment_objects,
    loadtest_objects,
    render,
)

Manifest = dict[str, Any]
ROLES = Roles("arn:aws:iam::123456789012:role/read", "arn:aws:iam::123456789012:role/cp")
ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"


def tailor(manifests: list[Manifest], spec: DeploymentSpec, **overrides: Any) -> list[Manifest]:
    options: dict[str, Any] = dict(namespace="triton-fleet", roles=ROLES, registry=ECR, autoscaling=True)
    options.update(overrides)
    return deployment_objects(manifests, spec, **options)


def named(objects: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_deploys_only_the_families_in_the_spec_and_never_the_load_test(all_manifests) -> None:
    objects = tailor(all_manifests, DeploymentSpec("s3://bucket/models", replicas={"gpu": 2}))
    assert set(named(objects, "StatefulSet")) == {"control-plane", "triton-gpu"}
    assert set(named(objects, "HorizontalPodAutoscaler")) == {"triton-gpu"}
    assert not named(objects, "Job") and "locust-master" not in named(objects, "Service")
    assert "locust" in named(objects, "ServiceAccount")  # shared objects stay


def test_sets_server_counts_and_the_autoscaler_floor(all_manifests) -> None:
    objects = tailor(all_manifests, DeploymentSpec("s3://bucket/models", replicas={"cpu": 6, "inf2": 0}))
    statefulsets, hpas = named(objects, "StatefulSet"), named(objects, "HorizontalPodAutoscaler")
    assert statefulsets["triton-cpu"]["spec"]["replicas"] == 6
    assert statefulsets["triton-inf2"]["spec"]["replicas"] == 0
    assert (hpas["triton-cpu"]["spec"]["minReplicas"], hpas["triton-cpu"]["spec"]["maxReplicas"]) == (6, 8)
    assert hpas["triton-inf2"]["spec"]["minReplicas"] == 1  # an HPA floor cannot be 0; at 0 servers it idles


def test_points_images_at_the_registry_and_tag(all_manifests) -> None:
    objects = tailor(all_manifests, DeploymentSpec("s3://bucket/models", replicas={"gpu": 1}, image_tag="0.2.0"))
    pod = named(objects, "StatefulSet")["triton-gpu"]["spec"]["template"]["spec"]
    images = {c["image"] for c in pod["containers"] + pod["initContainers"]}
    assert images == {f"{ECR}/triton-fleet/server-gpu:0.2.0"}
    control_plane = named(objects, "StatefulSet")["control-plane"]["spec"]["template"]["spec"]["containers"][0]
    assert control_plane["image"] == f"{ECR}/triton-fleet/control-plane:0.2.0"


def test_writes_the_repository_location_and_rolls_servers_when_it_changes(all_manifests) -> None:
    first = tailor(all_manifests, DeploymentSpec("s3://bucket/models/v1", replicas={"cpu": 1}, region="eu-west-1"))
    assert named(first, "ConfigMap")["fleet-repository"]["data"] == {
        "bucket": "bucket", "prefix": "models/v1", "region": "eu-west-1"}
    second = tailor(all_manifests, DeploymentSpec("s3://bucket/models/v2", replicas={"cpu": 1}))

    def checksum(objects: list[Manifest]) -> str:
        return named(objects, "StatefulSet")["triton-cpu"]["spec"]["template"]["metadata"]["annotations"][
            REPOSITORY_CHECKSUM]
    assert checksum(first) != checksum(second)


def test_sets_the_irsa_roles(all_manifests) -> None:
    accounts = named(tailor(all_manifests, DeploymentSpec("s3://b/p")), "ServiceAccount")
    assert accounts["triton-server"]["metadata"]["annotations"][ROLE_ARN_ANNOTATION] == ROLES.repository_read
    assert accounts["control-plane"]["metadata"]["annotations"][ROLE_ARN_ANNOTATION] == ROLES.control_plane


def test_refuses_the_example_iam_role(all_manifests) -> None:
    with pytest.raises(TargetError, match="ServiceAccount control-plane still has the example IAM role "
                                          r"arn:aws:iam::111122223333:role/triton-fleet-control-plane"):
        tailor(all_manifests, DeploymentSpec("s3://b/p"), roles=Roles(repository_read=ROLES.repository_read))


@pytest.mark.parametrize("uri", ["/local/repository", "s3://bucket-only", "s3://bucket/", "gs://bucket/p"])
def test_refuses_repositories_pods_cannot_sync_from(all_manifests, uri: str) -> None:
    with pytest.raises(TargetError, match="repository_uri must be s3://BUCKET/PREFIX"):
        tailor(all_manifests, DeploymentSpec(uri))


def test_without_autoscaling_no_autoscaler_is_deployed(all_manifests) -> None:
    objects = tailor(all_manifests, DeploymentSpec("s3://b/p", replicas={"cpu": 1}), autoscaling=False)
    assert not named(objects, "HorizontalPodAutoscaler")


def test_refuses_a_namespace_the_manifests_do_not_use(all_manifests) -> None:
    with pytest.raises(TargetError, match=r"render into namespace\(s\) \['triton-fleet'\].*'fleet-b'"):
        tailor(all_manifests, DeploymentSpec("s3://b/p"), namespace="fleet-b")


def test_loadtest_jobs_are_unsuspended_and_carry_the_run_settings(all_manifests) -> None:
    spec = LoadTestSpec("loadtest/bid_requests.py", host="triton-gpu:8001", users=200, spawn_rate=50.0,
                        duration_s=120, workers=4, env={"BID_MODELS": "500"})
    objects = loadtest_objects(all_manifests, spec, run_id="run-7", registry=ECR, deadline_s=1020)
    jobs = named(objects, "Job")
    assert set(jobs) == {"locust-master", "locust-worker"} and set(named(objects, "Service")) == {"locust-master"}

    def env(job: str) -> dict[str, str]:
        container = jobs[job]["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == f"{ECR}/triton-fleet/loadtest:0.1.0"
        return {e["name"]: e.get("value") for e in container["env"]}
    assert env("locust-master").items() >= {
        "LOCUST_LOCUSTFILE": "loadtest/bid_requests.py", "LOCUST_HOST": "triton-gpu:8001",
        "LOCUST_USERS": "200", "LOCUST_SPAWN_RATE": "50.0", "LOCUST_RUN_TIME": "120s",
        "LOCUST_EXPECT_WORKERS": "4", "BID_MODELS": "500"}.items()
    assert env("locust-worker")["LOCUST_LOCUSTFILE"] == "loadtest/bid_requests.py"
    assert env("locust-worker")["BID_MODELS"] == "500"
    assert (jobs["locust-worker"]["spec"]["parallelism"], jobs["locust-worker"]["spec"]["completions"]) == (4, 4)
    for job in jobs.values():
        assert job["spec"]["suspend"] is False
        assert job["spec"]["activeDeadlineSeconds"] == 1020
        assert job["spec"]["template"]["metadata"]["labels"]["triton-fleet.io/loadtest-run"] == "run-7"


def test_render_reads_a_pre_rendered_file(all_manifests, tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump_all(all_manifests))
    assert render(path) == all_manifests


def test_render_explains_a_missing_kubectl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TargetError, match="kubectl not found"):
        render(tmp_path)


def test_render_explains_a_broken_kustomization(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(TargetError, match="kubectl kustomize .* failed"):
        render(tmp_path)
