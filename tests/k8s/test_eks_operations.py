"""EksTarget's day-two operations against the API emulator: discover, scale, load test, teardown."""
from __future__ import annotations

import re
from typing import Any

import pytest
from kubernetes import client

from control_plane.targets.base import DeploymentSpec, LoadTestSpec, ServerEndpoint, TargetError
from control_plane.targets.eks.locust import STATS_BEGIN, STATS_END

NAMESPACE = "triton-fleet"
STATS_CSV = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
    "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
    "99.99%,100%\n"
    "grpc,mlp-pack-0000,52000,3,4,4.6,1,80,64.0,866.6,0.05,4,5,5,5,6,7,9,12,40,80,80\n"
    ",Aggregated,52000,3,4,4.6,1,80,64.0,866.6,0.05,4,5,5,5,6,7,9,12,40,80,80\n"
)
MASTER_LOG = f"Starting Locust 2.47.0\nRun time limit reached, shutting down\n{STATS_BEGIN}\n{STATS_CSV}{STATS_END}\n"
SPEC = LoadTestSpec("loadtest/triton_models.py", host="triton-cpu:8001", users=64, duration_s=30, workers=3)


@pytest.fixture
def deployed(sim, all_manifests: list[dict[str, Any]]) -> None:
    """The server StatefulSets, headless Services and autoscalers as deploy leaves them (cpu and gpu)."""
    apps, autoscaling = sim.apps, client.AutoscalingV2Api(sim.core.api_client)
    for obj in all_manifests:
        if obj["metadata"]["name"] not in ("triton-cpu", "triton-gpu"):
            continue
        if obj["kind"] == "StatefulSet":
            apps.create_namespaced_stateful_set(NAMESPACE, obj)
        elif obj["kind"] == "Service":
            sim.core.create_namespaced_service(NAMESPACE, obj)
        elif obj["kind"] == "HorizontalPodAutoscaler":
            autoscaling.create_namespaced_horizontal_pod_autoscaler(NAMESPACE, obj)


def test_discovers_ready_servers_by_their_stable_dns_names(make_target, sim, deployed):
    cpu, gpu = (apps for apps in sim.statefulsets() if apps.metadata.name.startswith("triton-"))
    sim.roll_out(cpu)
    sim.ensure_pods(gpu)  # scheduled later: not ready, so not a server yet

    servers = make_target().discover_servers()

    assert servers == [ServerEndpoint(name="triton-cpu-0", family="cpu",
                                      host="triton-cpu-0.triton-cpu.triton-fleet.svc")]
    assert servers[0].grpc_url == "triton-cpu-0.triton-cpu.triton-fleet.svc:8001"


def test_discovers_nothing_before_deploy(make_target):
    assert make_target().discover_servers() == []


def test_scale_sets_the_server_count_and_the_autoscaler_floor(make_target, sim, deployed):
    make_target().scale("gpu", 6)

    assert sim.apps.read_namespaced_stateful_set("triton-gpu", NAMESPACE).spec.replicas == 6
    hpa = client.AutoscalingV2Api(sim.core.api_client).read_namespaced_horizontal_pod_autoscaler(
        "triton-gpu", NAMESPACE)
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (6, 6)  # never a floor above the ceiling


def test_scale_to_zero_leaves_the_autoscaler_idle(make_target, sim, deployed):
    make_target().scale("cpu", 0)

    assert sim.apps.read_namespaced_stateful_set("triton-cpu", NAMESPACE).spec.replicas == 0
    hpa = client.AutoscalingV2Api(sim.core.api_client).read_namespaced_horizontal_pod_autoscaler(
        "triton-cpu", NAMESPACE)
    assert hpa.spec.min_replicas == 1  # Kubernetes does not autoscale a target with no replicas


def test_scaling_a_family_that_was_never_deployed_says_so(make_target, deployed):
    with pytest.raises(TargetError, match=r"no StatefulSet triton-inf2 .*deploy the inf2 family first"):
        make_target().scale("inf2", 1)
    with pytest.raises(TargetError, match="replicas >= 0"):
        make_target().scale("cpu", -1)


def test_loadtest_runs_locust_jobs_and_returns_the_masters_stats(make_target, sim, background):
    background.run(lambda: sim.run_job("locust-master", "Complete", MASTER_LOG))
    messages: list[str] = []

    result = make_target().run_loadtest(SPEC, messages.append)

    assert result.aggregated.requests == 52000 and result.aggregated.failures == 3
    assert (result.aggregated.p50_ms, result.aggregated.p99_ms) == (4.0, 12.0)
    assert result.stats_csv == STATS_CSV
    master = sim.batch.read_namespaced_job("locust-master", NAMESPACE)
    env = {e.name: e.value for e in master.spec.template.spec.containers[0].env}
    assert (env["LOCUST_USERS"], env["LOCUST_RUN_TIME"], env["LOCUST_EXPECT_WORKERS"]) == ("64", "30s", "3")
    assert master.spec.suspend is False
    assert sim.core.read_namespaced_service("locust-master", NAMESPACE).spec.ports[0].port == 5557
    with pytest.raises(client.ApiException):  # workers are cleaned up once the master is done
        sim.batch.read_namespaced_job("locust-worker", NAMESPACE)
    assert re.fullmatch(r"locust run \S+: 52000 requests, 867 rps, p99 12 ms", messages[-1])


def test_loadtest_replaces_the_previous_runs_jobs(make_target, sim, background):
    background.run(lambda: sim.run_job("locust-master", "Complete", MASTER_LOG))
    target = make_target()
    target.run_loadtest(SPEC)
    first_run = sim.batch.read_namespaced_job("locust-master", NAMESPACE).spec.template.metadata.labels

    target.run_loadtest(SPEC)

    second_run = sim.batch.read_namespaced_job("locust-master", NAMESPACE).spec.template.metadata.labels
    assert first_run["triton-fleet.io/loadtest-run"] != second_run["triton-fleet.io/loadtest-run"]


def test_a_failed_master_reports_the_end_of_its_log(make_target, sim, background):
    log = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'tritonclient'\n"
    background.run(lambda: sim.run_job("locust-master", "Failed", log))
    with pytest.raises(TargetError, match=r"locust master failed(.|\n)*No module named 'tritonclient'"):
        make_target().run_loadtest(SPEC)


def test_a_loadtest_image_that_cannot_be_pulled_stops_the_run(make_target, sim, background):
    def kubelet() -> None:
        pod = sim.start_job("locust-master")
        if pod:
            sim.waiting(pod, "locust", "triton-fleet/loadtest:0.1.0", "ErrImagePull", "manifest unknown")
    background.run(kubelet)
    with pytest.raises(TargetError, match=r"Job locust-master cannot run(.|\n)*cannot pull image "
                                          r"triton-fleet/loadtest:0.1.0 \(ErrImagePull: manifest unknown\)"):
        make_target().run_loadtest(SPEC)
    with pytest.raises(client.ApiException):  # no workers are left behind
        sim.batch.read_namespaced_job("locust-worker", NAMESPACE)


def test_teardown_removes_the_namespace_and_cluster_scoped_objects(make_target, sim, emulator, background):
    emulator.serve_custom_metrics()
    background.run(lambda: [sim.roll_out(s) for s in sim.statefulsets()])
    target = make_target()
    target.deploy(DeploymentSpec("s3://models-bucket/fleet", replicas={"cpu": 1}))
    background.stop()
    messages: list[str] = []

    target.teardown(messages.append)

    with pytest.raises(client.ApiException):
        sim.core.read_namespace(NAMESPACE)
    assert not sim.apps.list_namespaced_stateful_set(NAMESPACE).items
    rbac, storage = client.RbacAuthorizationV1Api(sim.core.api_client), client.StorageV1Api(sim.core.api_client)
    assert not rbac.list_cluster_role(label_selector="app.kubernetes.io/part-of=triton-fleet").items
    assert not rbac.list_cluster_role_binding(label_selector="app.kubernetes.io/part-of=triton-fleet").items
    assert not storage.list_storage_class().items
    assert messages[0] == "deleting namespace triton-fleet" and messages[-1] == "teardown complete"
    target.teardown()  # a second teardown finds nothing to do and does not fail
