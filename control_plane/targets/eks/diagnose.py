"""Why a pod is not running, in words that say what to fix.

A rollout that never finishes is the most common EKS failure and the least helpful one: the pod just
sits Pending or restarting. This module reads what the scheduler and kubelet recorded (pod conditions,
container states, events) and, for accelerators, what the nodes advertise, so that a missing device
plugin, an absent node group, an unpushed image or a crashing server each get their own message.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kubernetes.client import ApiException, CoreV1Event, V1ContainerStatus, V1Node, V1Pod

from control_plane.targets.eks.client import Cluster, api_error

IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CANNOT_START = {
    "CreateContainerConfigError": "a Secret or ConfigMap key it reads is missing (docs/eks.md, \"Secrets\")",
    "CreateContainerError": "the container runtime refused it",
}
# A crash or two can be transient (credentials still propagating); this many restarts is not.
CRASH_RESTARTS = 3


@dataclass(frozen=True)
class Accelerator:
    """An extended resource a device plugin advertises, and how to get it advertised."""

    resource: str
    plugin: str
    node_group: str
    install: str


ACCELERATORS = (
    Accelerator("nvidia.com/gpu", "the NVIDIA device plugin", "g4dn",
                "helm repo add nvdp https://nvidia.github.io/k8s-device-plugin && "
                "helm upgrade -i nvdp nvdp/nvidia-device-plugin -n kube-system"),
    Accelerator("aws.amazon.com/neuron", "the Neuron device plugin", "inf2",
                "helm upgrade -i neuron-helm-chart oci://public.ecr.aws/neuron/neuron-helm-chart -n kube-system"),
)


@dataclass(frozen=True)
class PodProblem:
    """What is wrong with one pod; fatal problems end a wait at once rather than at its timeout."""

    pod: str
    message: str
    fatal: bool


def diagnose(cluster: Cluster, pods: list[V1Pod], unschedulable_grace_s: float) -> list[PodProblem]:
    """Problems of the pods that are not running as they should. A pod unschedulable for less than the
    grace period is reported but not fatal: a cluster autoscaler may still be adding a node."""
    nodes: list[V1Node] | None = None

    def list_nodes() -> list[V1Node]:
        nonlocal nodes
        if nodes is None:
            try:
                nodes = cluster.core.list_node().items
            except ApiException as error:
                raise api_error(error, "list nodes") from None
        return nodes

    problems = []
    for pod in pods:
        problem = _container_problem(cluster, pod) or _scheduling_problem(pod, list_nodes,
                                                                           unschedulable_grace_s)
        if problem:
            problems.append(problem)
    return problems


def _container_problem(cluster: Cluster, pod: V1Pod) -> PodProblem | None:
    status = pod.status
    statuses: list[V1ContainerStatus] = [*(status.init_container_statuses or []),
                                         *(status.container_statuses or [])] if status else []
    name = pod.metadata.name
    for container in statuses:
        waiting = container.state.waiting if container.state else None
        reason = waiting.reason if waiting else None
        if reason in IMAGE_PULL_REASONS:
            detail = _latest_warning(cluster, name) or waiting.message or reason
            return PodProblem(name, f"pod {name}: container {container.name} cannot pull image "
                                    f"{container.image} ({reason}: {detail}). Push the image to your "
                                    "registry (docs/eks.md, step 6), check its name and tag, and that the "
                                    "node role may pull from ECR (AmazonEC2ContainerRegistryReadOnly).",
                              fatal=True)
        if reason == "CrashLoopBackOff" and container.restart_count >= CRASH_RESTARTS:
            last = container.last_state.terminated if container.last_state else None
            exit_info = f"; last exit code {last.exit_code} ({last.reason})" if last else ""
            return PodProblem(name, f"pod {name}: container {container.name} keeps crashing "
                                    f"({container.restart_count} restarts{exit_info}). See `kubectl -n "
                                    f"{pod.metadata.namespace} logs {name} -c {container.name} --previous`.",
                              fatal=True)
        if reason in CANNOT_START:
            detail = _latest_warning(cluster, name) or waiting.message or reason
            return PodProblem(name, f"pod {name}: container {container.name} cannot start ({reason}: "
                                    f"{detail}): {CANNOT_START[reason]}.", fatal=True)
    return None


def _latest_warning(cluster: Cluster, pod_name: str) -> str | None:
    """The newest Warning event's message for a pod (the kubelet's own words on pull failures)."""
    try:
        events: list[CoreV1Event] = cluster.core.list_namespaced_event(
            cluster.namespace, field_selector=f"involvedObject.kind=Pod,involvedObject.name={pod_name}").items
    except ApiException as error:
        raise api_error(error, f"list events of pod {pod_name}") from None
    warnings = [e for e in events if e.type == "Warning" and e.message]
    warnings.sort(key=lambda e: e.last_timestamp or e.event_time or datetime.min.replace(tzinfo=UTC))
    return warnings[-1].message if warnings else None


def _scheduling_problem(pod: V1Pod, nodes: Callable[[], list[V1Node]], grace_s: float) -> PodProblem | None:
    conditions = (pod.status.conditions or []) if pod.status else []
    condition = next((c for c in conditions if c.type == "PodScheduled"), None)
    if condition is None or condition.status != "False" or condition.reason != "Unschedulable":
        return None
    since = condition.last_transition_time or datetime.now(UTC)
    waited = (datetime.now(UTC) - since).total_seconds()
    return PodProblem(pod.metadata.name,
                      explain_unschedulable(pod, condition.message or "no reason given", nodes),
                      fatal=waited >= grace_s)


def explain_unschedulable(pod: V1Pod, message: str, nodes: Callable[[], list[V1Node]]) -> str:
    """Turn the scheduler's summary ("0/3 nodes are available: ...") into the likely cause and its fix."""
    name = pod.metadata.name
    for accelerator in ACCELERATORS:
        if f"Insufficient {accelerator.resource}" not in message:
            continue
        advertising = [n for n in nodes() if _count((n.status.allocatable or {}).get(accelerator.resource))]
        if not advertising:
            return (f"pod {name} needs {accelerator.resource}, but no node advertises it: "
                    f"{accelerator.plugin} is not running, or no {accelerator.node_group} node is up. "
                    f"Check the node group (`kubectl get nodes -l eks.amazonaws.com/nodegroup="
                    f"{accelerator.node_group}`) and install the plugin: {accelerator.install} "
                    f"(scheduler: {message})")
        return (f"pod {name} needs {accelerator.resource}, and every one on the {len(advertising)} node(s) "
                f"that have it is taken: add nodes (`eksctl scale nodegroup --cluster CLUSTER --name "
                f"{accelerator.node_group} --nodes N`) or run fewer servers (scheduler: {message})")
    selector = (pod.spec.node_selector or {}) if pod.spec else {}
    if "didn't match Pod's node affinity/selector" in message:
        return (f"pod {name}: no node matches its nodeSelector {selector}. Create that node group "
                "(k8s/cluster/eksctl-cluster.yaml) or scale it up from 0 (scheduler: "
                f"{message})")
    if "untolerated taint" in message:
        return (f"pod {name}: the nodes it may use carry taints it does not tolerate; compare the node group "
                f"taints with k8s/cluster/eksctl-cluster.yaml (scheduler: {message})")
    if "Insufficient cpu" in message or "Insufficient memory" in message:
        return (f"pod {name}: no node with {selector or 'a matching label'} has the free cpu/memory it "
                f"requests; add nodes to its node group (scheduler: {message})")
    return f"pod {name} cannot be scheduled (scheduler: {message})"


def _count(quantity: str | None) -> int:
    """Extended resources (GPUs, Neuron devices) are whole numbers."""
    return int(quantity) if quantity and quantity.isdigit() else 0
