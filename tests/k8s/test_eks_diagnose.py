"""The explanations the EKS target gives for pods that do not run, and for refused API calls."""
from __future__ import annotations

from kubernetes.client import ApiException, V1Container, V1Node, V1NodeStatus, V1ObjectMeta, V1Pod, V1PodSpec

from control_plane.targets.eks.client import Cluster, api_error
from control_plane.targets.eks.diagnose import diagnose, explain_unschedulable

INF2_SELECTOR = {"node.kubernetes.io/instance-type": "inf2.xlarge"}


def pod(name: str = "triton-inf2-0", selector: dict[str, str] | None = None) -> V1Pod:
    return V1Pod(metadata=V1ObjectMeta(name=name, namespace="triton-fleet"),
                 spec=V1PodSpec(containers=[V1Container(name="triton")], node_selector=selector or INF2_SELECTOR))


def node(allocatable: dict[str, str]) -> V1Node:
    return V1Node(metadata=V1ObjectMeta(name="ip-10-0-3-1"), status=V1NodeStatus(allocatable=allocatable))


def test_missing_neuron_devices_point_at_the_neuron_device_plugin() -> None:
    message = explain_unschedulable(pod(), "0/2 nodes are available: 2 Insufficient aws.amazon.com/neuron.",
                                    lambda: [node({"cpu": "4", "aws.amazon.com/neuron": "0"})])
    assert "needs aws.amazon.com/neuron, but no node advertises it" in message
    assert "the Neuron device plugin is not running, or no inf2 node is up" in message
    assert "oci://public.ecr.aws/neuron/neuron-helm-chart" in message


def test_a_missing_node_group_is_named_by_the_pods_node_selector() -> None:
    message = explain_unschedulable(pod(), "0/2 nodes are available: 2 node(s) didn't match Pod's node "
                                    "affinity/selector.", lambda: [])
    assert "no node matches its nodeSelector {'node.kubernetes.io/instance-type': 'inf2.xlarge'}" in message
    assert "k8s/cluster/eksctl-cluster.yaml" in message


def test_an_untolerated_taint_is_called_out() -> None:
    message = explain_unschedulable(pod("triton-cpu-0", {"kubernetes.io/arch": "arm64"}),
                                    "0/1 nodes are available: 1 node(s) had untolerated taint "
                                    "{nvidia.com/gpu: true}.", lambda: [])
    assert "carry taints it does not tolerate" in message and "{nvidia.com/gpu: true}" in message


def test_full_nodes_ask_for_more_nodes() -> None:
    message = explain_unschedulable(pod(), "0/3 nodes are available: 3 Insufficient memory.", lambda: [])
    assert "has the free cpu/memory it requests; add nodes" in message


def test_a_crash_or_two_is_tolerated_but_a_crash_loop_is_not(sim, api_client) -> None:
    cluster = Cluster(api_client, "triton-fleet")
    sim.core.create_namespaced_pod("triton-fleet", {"metadata": {"name": "triton-cpu-0"},
                                                    "spec": {"containers": [{"name": "triton"}]}})

    def crashed(restarts: int) -> list:
        sim.core.patch_namespaced_pod_status("triton-cpu-0", "triton-fleet", {"status": {"containerStatuses": [{
            "name": "model-sync-init", "image": "server-cpu", "imageID": "", "ready": False,
            "restartCount": restarts, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}})
        return diagnose(cluster, [sim.core.read_namespaced_pod("triton-cpu-0", "triton-fleet")], 0.0)

    assert crashed(restarts=1) == []
    (problem,) = crashed(restarts=4)
    assert problem.fatal
    assert "container model-sync-init keeps crashing (4 restarts; last exit code 1 (Error))" in problem.message
    assert "logs triton-cpu-0 -c model-sync-init --previous" in problem.message


def test_a_missing_secret_key_stops_the_rollout(sim, api_client) -> None:
    cluster = Cluster(api_client, "triton-fleet")
    sim.core.create_namespaced_pod("triton-fleet", {"metadata": {"name": "control-plane-0"},
                                                    "spec": {"containers": [{"name": "control-plane"}]}})
    sim.waiting("control-plane-0", "control-plane", "control-plane", "CreateContainerConfigError",
                'secret "fleet-api-token" not found')
    (problem,) = diagnose(cluster, [sim.core.read_namespaced_pod("control-plane-0", "triton-fleet")], 0.0)
    assert problem.fatal
    assert 'secret "fleet-api-token" not found' in problem.message
    assert "a Secret or ConfigMap key it reads is missing" in problem.message


def test_a_forbidden_call_names_the_permission_to_check() -> None:
    refused = ApiException(status=403, reason="Forbidden", body='{"kind": "Status", "message": "statefulsets.apps '
                           '\\"triton-gpu\\" is forbidden: User \\"dev\\" cannot patch resource"}')
    message = str(api_error(refused, "scale StatefulSet triton-gpu"))
    assert message.startswith("the cluster refused to scale StatefulSet triton-gpu: statefulsets.apps")
    assert "EKS access entry" in message and "rbac.yaml" in message


def test_an_immutable_field_change_says_how_to_get_past_it() -> None:
    rejected = ApiException(status=422, reason="Invalid", body='{"message": "StatefulSet.apps \\"triton-cpu\\" '
                            'is invalid: spec: Forbidden: updates to statefulset spec for fields other than ..."}')
    assert "kubectl delete --cascade=orphan" in str(api_error(rejected, "apply StatefulSet triton-cpu"))
