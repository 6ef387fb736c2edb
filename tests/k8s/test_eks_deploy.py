"""EksTarget.deploy against the API emulator: what it applies, how it waits, and why it stops.

The Simulator plays the StatefulSet controller and kubelet in a background thread, writing the
statuses a real cluster would write, while deploy polls the API.
"""
from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from control_plane.targets.base import DeploymentSpec, TargetError
from control_plane.targets.eks import EksSettings, EksTarget

FROM_ECR = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
SPEC = DeploymentSpec("s3://models-bucket/fleet", replicas={"cpu": 2, "gpu": 1}, region="us-east-1")
NO_GPU_NODE = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."


def roll_out_everything(sim) -> None:
    for sts in sim.statefulsets():
        sim.roll_out(sts)


def test_deploy_applies_the_requested_fleet_and_waits_for_its_rollout(make_target, sim, emulator, background):
    emulator.serve_custom_metrics()
    background.run(lambda: roll_out_everything(sim))
    messages: list[str] = []

    make_target().deploy(SPEC, messages.append)

    statefulsets = {s.metadata.name: s for s in sim.statefulsets()}
    assert set(statefulsets) == {"control-plane", "triton-cpu", "triton-gpu"}
    assert statefulsets["triton-cpu"].spec.replicas == 2
    assert statefulsets["triton-gpu"].spec.template.spec.containers[0].image == \
        f"{FROM_ECR}/triton-fleet/server-gpu:0.1.0"
    assert sim.core.read_namespaced_config_map("fleet-repository", "triton-fleet").data == {
        "bucket": "models-bucket", "prefix": "fleet", "region": "us-east-1"}
    hpa = client.AutoscalingV2Api(sim.core.api_client).read_namespaced_horizontal_pod_autoscaler(
        "triton-cpu", "triton-fleet")
    assert hpa.spec.min_replicas == 2
    assert sim.core.read_namespace("triton-fleet").metadata.labels["app.kubernetes.io/part-of"] == "triton-fleet"
    # No server is reachable before the policies that guard it exist.
    assert messages.index("applied NetworkPolicy triton-server-ingress") < \
        messages.index("applied StatefulSet triton-cpu")
    assert "triton-cpu: 2/2 ready, 2/2 updated" in messages
    assert messages[-1] == "deployed: control-plane, triton-cpu, triton-gpu rolled out"


def test_deploy_creates_missing_secrets_and_keeps_existing_ones(make_target, sim, emulator, background):
    emulator.serve_custom_metrics()
    background.run(lambda: roll_out_everything(sim))
    sim.core.create_namespaced_secret("triton-fleet", {"metadata": {"name": "fleet-database"},
                                                       "stringData": {"url": "postgresql://rds/fleet"}})
    make_target().deploy(SPEC)

    def value(name: str, key: str) -> str:
        secret = sim.core.read_namespaced_secret(name, "triton-fleet")
        return secret.string_data[key] if secret.string_data else base64.b64decode(secret.data[key]).decode()
    assert value("fleet-database", "url") == "postgresql://rds/fleet"
    assert len(value("triton-admin-key", "key")) >= 32
    assert value("fleet-api-token", "token") != value("triton-admin-key", "key")


def test_deploy_times_out_naming_what_is_not_ready(make_target, sim, emulator, background):
    emulator.serve_custom_metrics()
    background.run(lambda: [sim.ensure_pods(s) for s in sim.statefulsets()])  # pods that never get ready
    with pytest.raises(TargetError, match=r"did not finish within 1s: .*triton-cpu: 0/2 ready"):
        make_target(rollout_timeout_s=1.0).deploy(SPEC)


def test_deploy_says_when_no_node_advertises_a_gpu(make_target, sim, emulator, background):
    emulator.serve_custom_metrics()
    sim.add_node("ip-10-0-1-1", "c7g.xlarge", {"cpu": "3920m", "memory": "6Gi"})

    def schedule() -> None:
        for sts in sim.statefulsets():
            if sts.metadata.name == "triton-gpu":
                for pod in sim.ensure_pods(sts):
                    sim.unschedulable(pod, NO_GPU_NODE)
            else:
                sim.roll_out(sts)
    background.run(schedule)

    with pytest.raises(TargetError) as failure:
        make_target().deploy(SPEC)
    message = str(failure.value)
    assert "pod triton-gpu-0 needs nvidia.com/gpu, but no node advertises it" in message
    assert "NVIDIA device plugin is not running, or no g4dn node is up" in message
    assert "helm upgrade -i nvdp nvdp/nvidia-device-plugin" in message


def test_deploy_says_when_every_gpu_is_taken(make_target, sim, emulator, background):
    emulator.serve_custom_metrics()
    sim.add_node("ip-10-0-2-1", "g4dn.xlarge", {"cpu": "3920m", "memory": "14Gi", "nvidia.com/gpu": "1"})
    background.run(lambda: [sim.unschedulable(pod, NO_GPU_NODE)
                            for sts in sim.statefulsets() for pod in sim.ensure_pods(sts)])
    with pytest.raises(TargetError, match=r"every one on the 1 node\(s\) that have it is taken.*eksctl scale"):
        make_target().deploy(DeploymentSpec("s3://models-bucket/fleet", replicas={"gpu": 1}))


def test_a_recently_unschedulable_pod_is_given_time_for_a_node_to_join(make_target, sim, emulator, background):
    emulator.serve_custom_metrics()
    background.run(lambda: [sim.unschedulable(pod, NO_GPU_NODE, since=datetime.now(UTC))
                            for sts in sim.statefulsets() for pod in sim.ensure_pods(sts)])
    with pytest.raises(TargetError, match=r"did not finish within 1s(.|\n)*no node advertises it"):
        make_target(unschedulable_grace_s=600.0, rollout_timeout_s=1.0).deploy(
            DeploymentSpec("s3://models-bucket/fleet", replicas={"gpu": 1}))


def test_deploy_stops_at_once_on_an_image_that_cannot_be_pulled(make_target, sim, emulator, background):
    emulator.serve_custom_metrics()
    image = f"{FROM_ECR}/triton-fleet/server-cpu:0.1.0"

    def kubelet() -> None:
        for sts in sim.statefulsets():
            for pod in sim.ensure_pods(sts):
                sim.warning_event(pod, "Failed", f'Failed to pull image "{image}": not found')
                sim.waiting(pod, "model-sync-init", image, "ImagePullBackOff", f'Back-off pulling image "{image}"')
    background.run(kubelet)

    with pytest.raises(TargetError) as failure:
        make_target(rollout_timeout_s=60.0).deploy(SPEC)
    message = str(failure.value)
    assert f"container model-sync-init cannot pull image {image}" in message
    assert "Failed to pull image" in message and "not found" in message
    assert "Push the image" in message


def test_deploy_requires_the_custom_metrics_api_for_its_autoscalers(make_target, sim):
    with pytest.raises(TargetError, match=r"no custom metrics API \(custom.metrics.k8s.io\).*Prometheus adapter"):
        make_target().deploy(SPEC)
    with pytest.raises(client.ApiException):  # nothing was applied
        sim.core.read_namespaced_config_map("fleet-repository", "triton-fleet")


def test_deploy_without_autoscaling_needs_no_metrics_api(make_target, sim, background):
    background.run(lambda: roll_out_everything(sim))
    make_target(autoscaling=False).deploy(SPEC)
    autoscaling = client.AutoscalingV2Api(sim.core.api_client)
    assert not autoscaling.list_namespaced_horizontal_pod_autoscaler("triton-fleet").items


def test_deploy_names_a_kind_the_cluster_does_not_serve(make_target, emulator, all_manifests, tmp_path: Path):
    emulator.serve_custom_metrics()
    scaled_object = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                     "metadata": {"name": "triton-cpu", "namespace": "triton-fleet"},
                     "spec": {"scaleTargetRef": {"name": "triton-cpu"}}}
    manifests = tmp_path / "with-keda.yaml"
    manifests.write_text(yaml.safe_dump_all([*all_manifests, scaled_object]))
    with pytest.raises(TargetError, match=r"does not serve ScaledObject \(keda.sh/v1alpha1\): install"):
        make_target(manifests=manifests).deploy(SPEC)


def test_no_credentials_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    target = EksTarget(EksSettings())  # constructing needs no credentials ...
    with pytest.raises(TargetError, match=r"no Kubernetes credentials: .*aws eks update-kubeconfig"):
        target.discover_servers()  # ... using it does




def test_settings_come_from_the_environment_when_not_given(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLEET_EKS_NAMESPACE", "fleet-b")
    monkeypatch.setenv("FLEET_EKS_REGISTRY", FROM_ECR)
    monkeypatch.setenv("FLEET_EKS_REPOSITORY_ROLE_ARN", "arn:aws:iam::123456789012:role/read")
    monkeypatch.setenv("FLEET_EKS_AUTOSCALING", "false")
    settings = EksTarget().settings
    assert (settings.namespace, settings.registry, settings.autoscaling) == ("fleet-b", FROM_ECR, False)
    assert settings.roles.repository_read == "arn:aws:iam::123456789012:role/read"
    assert settings.roles.control_plane is None  # unset: the manifests' value stays


# ---- the control plane's database -------------------------------------------------------------
def database_secret(sim, url: str) -> None:
    sim.core.create_namespaced_secret("triton-fleet", {"metadata": {"name": "fleet-database"},
                                                       "stringData": {"url": url}})


def control_plane_pdb(sim) -> client.V1PodDisruptionBudget:
    return client.PolicyV1Api(sim.core.api_client).read_namespaced_pod_disruption_budget("control-plane",
                                                                                         "triton-fleet")


@pytest.mark.parametrize("url", [None, "sqlite:////data/fleet.db"])
def test_the_manifests_two_control_planes_are_refused_on_sqlite_before_anything_is_applied(make_target, sim,
                                                                                          emulator, url):
    emulator.serve_custom_metrics()
    if url:
        database_secret(sim, url)
    with pytest.raises(TargetError) as refused:
        make_target(control_plane_replicas=None).deploy(SPEC)
    message = str(refused.value)
    assert "refusing to run 2 control-plane replicas" in message
    assert ("no fleet-database Secret" if url is None else "url is sqlite://...") in message
    assert "postgresql+psycopg://" in message and "docs/eks.md, step 5b" in message
    assert "FLEET_EKS_CONTROL_PLANE_REPLICAS=1" in message and "--control-plane-replicas 1" in message
    assert not sim.statefulsets()
    with pytest.raises(client.ApiException):  # nothing was applied
        sim.core.read_namespaced_config_map("fleet-repository", "triton-fleet")


def test_two_control_planes_deploy_on_postgresql_with_their_disruption_budget(make_target, sim, emulator,
                                                                              background):
    emulator.serve_custom_metrics()
    database_secret(sim, "postgresql+psycopg://fleet:secret@triton-fleet.abc.us-east-1.rds.amazonaws.com/fleet")
    background.run(lambda: roll_out_everything(sim))
    make_target(control_plane_replicas=None).deploy(SPEC)
    control_plane = next(s for s in sim.statefulsets() if s.metadata.name == "control-plane")
    assert control_plane.spec.replicas == 2
    assert control_plane_pdb(sim).spec.min_available == 1


def test_one_control_plane_on_sqlite_is_a_trial_that_deploy_sets_up_and_says_so(make_target, sim, emulator,
                                                                              background):
    emulator.serve_custom_metrics()
    background.run(lambda: roll_out_everything(sim))
    messages: list[str] = []
    make_target(control_plane_replicas=1).deploy(SPEC, messages.append)
    control_plane = next(s for s in sim.statefulsets() if s.metadata.name == "control-plane")
    assert control_plane.spec.replicas == 1
    secret = sim.core.read_namespaced_secret("fleet-database", "triton-fleet")
    url = secret.string_data["url"] if secret.string_data else base64.b64decode(secret.data["url"]).decode()
    assert url == "sqlite:////data/fleet.db"
    pdb = control_plane_pdb(sim).spec
    assert pdb.min_available is None and pdb.max_unavailable == 1, "one replica must not block node drains"
    assert any("one replica on SQLite" in m and "step 5b" in m for m in messages), messages


def test_the_control_plane_replica_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    from control_plane.deployments import make_target as target_named
    from control_plane.settings import Settings

    monkeypatch.setenv("FLEET_EKS_CONTROL_PLANE_REPLICAS", "1")
    assert EksTarget().settings.control_plane_replicas == 1
    assert target_named("eks", Settings(), control_plane_replicas=3).settings.control_plane_replicas == 3
    monkeypatch.setenv("FLEET_EKS_CONTROL_PLANE_REPLICAS", "two")
    with pytest.raises(TargetError, match="FLEET_EKS_CONTROL_PLANE_REPLICAS='two' is not a whole number"):
        EksTarget()
