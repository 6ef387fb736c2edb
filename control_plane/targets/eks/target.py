"""The EKS deployment target: the fleet as Kubernetes objects rendered from k8s/.

deploy     renders k8s/overlays/all, keeps what the DeploymentSpec asks for, server-side applies it and
           waits for every StatefulSet to roll out (explaining stuck pods: no GPU, no image, ...).
discover   lists the Ready pods behind each family's headless Service, addressed by their stable DNS
           names (triton-cpu-0.triton-cpu.<namespace>.svc).
scale      sets a family's server count (the scale subresource) and its autoscaler's floor.
loadtest   runs locust as a master Job and a worker Job and reads the stats from the master's log.
teardown   deletes the namespace and the project's cluster-scoped objects.

Works from a laptop (kubeconfig) and from the control-plane pod (in-cluster credentials, RBAC in
k8s/modules/control-plane/rbac.yaml). Validated against an API emulator only (docs/eks.md).
"""
from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from kubernetes.client import ApiClient, ApiException, V1Pod

from control_plane.targets.base import (
    ComputeFamily,
    DeploymentSpec,
    LoadTestResult,
    LoadTestSpec,
    Progress,
    ServerEndpoint,
    TargetError,
    TargetName,
)
from control_plane.targets.eks.client import Cluster, api_error, load_api_client
from control_plane.targets.eks.database import (
    DATABASE_KEY,
    DATABASE_SECRET,
    SQLITE_TRIAL_URL,
    refusal,
    secret_url,
    set_control_plane_replicas,
)
from control_plane.targets.eks.locust import result_from_log
from control_plane.targets.eks.manifests import (
    ALL_OVERLAY,
    COMPONENT_LABEL,
    FAMILY_LABEL,
    LOADTEST_RUN_LABEL,
    LOCUST_ROLE_LABEL,
    PART_OF_SELECTOR,
    Roles,
    deployment_objects,
    loadtest_objects,
    render,
    statefulset_name,
)
from control_plane.targets.eks.rollout import (
    Waiting,
    pods,
    wait_for_job,
    wait_for_statefulsets,
    wait_until_gone,
)

FAMILIES: tuple[ComputeFamily, ...] = ("cpu", "gpu", "inf2")
CUSTOM_METRICS_GROUP = "custom.metrics.k8s.io"
# Cluster-scoped kinds in k8s/ (namespace deletion does not remove them); tests/k8s keeps this complete.
CLUSTER_SCOPED = (("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
                  ("rbac.authorization.k8s.io/v1", "ClusterRole"),
                  ("storage.k8s.io/v1", "StorageClass"))


def _random_secret() -> str:
    return secrets.token_urlsafe(32)


# Secret name -> (key, how to make a value when the Secret is missing). The database's Secret is made
# only for a one-replica trial on SQLite (control_plane/targets/eks/database.py); with more replicas it
# must exist already, holding the PostgreSQL URL (docs/eks.md, step 5b).
SECRETS = {
    "triton-admin-key": ("key", _random_secret),
    "fleet-api-token": ("token", _random_secret),
}


@dataclass(frozen=True)
class EksSettings:
    """Where and how the target works; the defaults fit k8s/ and k8s/cluster/eksctl-cluster.yaml."""

    namespace: str = "triton-fleet"
    # A kustomization directory (rendered with kubectl) or a pre-rendered YAML file.
    manifests: Path = ALL_OVERLAY
    # Prefix for the project's images, e.g. 111122223333.dkr.ecr.us-east-1.amazonaws.com; None keeps
    # the names the manifests render (triton-fleet/...).
    registry: str | None = None
    roles: Roles = field(default_factory=Roles)
    # Without the Prometheus adapter the HPAs cannot read Triton's metrics; False deploys none.
    autoscaling: bool = True
    kube_context: str | None = None
    rollout_timeout_s: float = 900.0
    # How long a pod may stay unschedulable before deploy gives up (time for a node to join).
    unschedulable_grace_s: float = 180.0
    # Added to a load test's duration: image pulls, node start, waiting for workers, writing stats.
    loadtest_overhead_s: float = 900.0
    # Control-plane replicas; None keeps the manifests' count (2, on PostgreSQL). 1 may run on SQLite.
    control_plane_replicas: int | None = None
    poll_s: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EksSettings:
        """Settings from FLEET_EKS_* variables, for callers that build EksTarget() without arguments
        (the CLI, the control plane). Unset variables keep the defaults."""
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            namespace=env.get("FLEET_EKS_NAMESPACE", defaults.namespace),
            manifests=Path(env.get("FLEET_EKS_MANIFESTS", defaults.manifests)),
            registry=env.get("FLEET_EKS_REGISTRY") or None,
            roles=Roles(env.get("FLEET_EKS_REPOSITORY_ROLE_ARN") or None,
                        env.get("FLEET_EKS_CONTROL_PLANE_ROLE_ARN") or None),
            autoscaling=env.get("FLEET_EKS_AUTOSCALING", "true").lower() not in ("0", "false", "no"),
            kube_context=env.get("FLEET_EKS_CONTEXT") or None,
            control_plane_replicas=_optional_int(env, "FLEET_EKS_CONTROL_PLANE_REPLICAS"),
        )


class EksTarget:
    """Triton fleet on an EKS cluster (any conformant Kubernetes 1.30+ with the same node groups)."""

    name: TargetName = "eks"

    def __init__(self, settings: EksSettings | None = None, api_client: ApiClient | None = None) -> None:
        self.settings = settings or EksSettings.from_env()
        self._api_client = api_client

    @cached_property
    def cluster(self) -> Cluster:
        """Connected on first use, so constructing a target never needs credentials."""
        api = self._api_client or load_api_client(self.settings.kube_context)
        return Cluster(api, self.settings.namespace)

    def _waiting(self, timeout_s: float) -> Waiting:
        return Waiting(timeout_s, self.settings.poll_s, self.settings.unschedulable_grace_s)

    def deploy(self, spec: DeploymentSpec, progress: Progress | None = None) -> None:
        report = progress or _quiet
        s = self.settings
        objects = deployment_objects(render(s.manifests), spec, s.namespace, s.roles, s.registry, s.autoscaling)
        control_planes = set_control_plane_replicas(objects, s.control_plane_replicas)
        database = self._database_url()
        problem = refusal(control_planes, database, s.namespace)
        if problem:
            raise TargetError(problem)
        if any(obj["kind"] == "HorizontalPodAutoscaler" for obj in objects) \
                and not self.cluster.serves_group(CUSTOM_METRICS_GROUP):
            raise TargetError(
                f"the cluster serves no custom metrics API ({CUSTOM_METRICS_GROUP}), so the autoscalers "
                "could never read Triton's queue time: install the Prometheus adapter with the rules in "
                "docs/eks.md (\"Autoscaling metrics\"), or deploy with EksSettings(autoscaling=False)"
            )
        # The namespace first, then the Secrets its pods read, then the NetworkPolicies (no server is
        # reachable before they exist), then everything else in kustomize's order.
        for obj in objects:
            if obj["kind"] == "Namespace":
                self.cluster.apply(obj)
        self._ensure_secrets(report, {DATABASE_SECRET: (DATABASE_KEY, lambda: SQLITE_TRIAL_URL)} if database is None
                             else {})
        if database is None:
            report(f"the control plane runs one replica on SQLite on its volume (a trial): for several replicas "
                   f"put a PostgreSQL URL in the {DATABASE_SECRET} Secret (docs/eks.md, step 5b)")
        for obj in sorted((o for o in objects if o["kind"] != "Namespace"),
                          key=lambda o: o["kind"] != "NetworkPolicy"):
            self.cluster.apply(obj)
            report(f"applied {obj['kind']} {obj['metadata']['name']}")
        statefulsets = [obj["metadata"]["name"] for obj in objects if obj["kind"] == "StatefulSet"]
        wait_for_statefulsets(self.cluster, statefulsets, self._waiting(s.rollout_timeout_s), report)
        report(f"deployed: {', '.join(statefulsets)} rolled out")

    def _database_url(self) -> str | None:
        """The control plane's database URL from its Secret, None when there is no Secret yet."""
        try:
            return secret_url(self.cluster.core.read_namespaced_secret(DATABASE_SECRET, self.settings.namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise api_error(error, f"read Secret {DATABASE_SECRET}") from None

    def _ensure_secrets(self, report: Progress, extra: Mapping[str, tuple] | None = None) -> None:
        """Create the Secrets the pods read if they are missing; never overwrite existing ones."""
        core = self.cluster.core
        for name, (key, make) in {**SECRETS, **(extra or {})}.items():
            try:
                core.read_namespaced_secret(name, self.settings.namespace)
                continue
            except ApiException as error:
                if error.status != 404:
                    raise api_error(error, f"read Secret {name}") from None
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "triton-fleet"}},
                    "stringData": {key: make()}}
            try:
                core.create_namespaced_secret(self.settings.namespace, body)
            except ApiException as error:
                raise api_error(error, f"create Secret {name}") from None
            report(f"created Secret {name} (read it with `kubectl -n {self.settings.namespace} get secret "
                   f"{name} -o jsonpath='{{.data.{key}}}' | base64 -d`)")

    def discover_servers(self) -> list[ServerEndpoint]:
        """Ready Triton pods of every family's headless Service, by their per-pod DNS names."""
        try:
            services = self.cluster.core.list_namespaced_service(
                self.settings.namespace, label_selector=f"{COMPONENT_LABEL}=inference-server").items
        except ApiException as error:
            raise api_error(error, "list Triton services") from None
        servers = []
        for service in services:
            family = (service.metadata.labels or {}).get(FAMILY_LABEL)
            if family not in FAMILIES or not service.spec.selector:
                continue
            selector = ",".join(f"{k}={v}" for k, v in sorted(service.spec.selector.items()))
            for pod in pods(self.cluster, selector):
                if _ready(pod):
                    host = f"{pod.metadata.name}.{service.metadata.name}.{self.settings.namespace}.svc"
                    servers.append(ServerEndpoint(name=pod.metadata.name, family=family, host=host))
        return sorted(servers, key=lambda server: server.name)

    def scale(self, family: ComputeFamily, replicas: int) -> None:
        """Set a family's server count. The autoscaler's floor follows (at 0 it stands still), so it
        does not undo the change; under load it may still add servers up to its maximum."""
        if family not in FAMILIES or replicas < 0:
            raise TargetError(f"cannot scale {family!r} to {replicas}: families are {FAMILIES}, replicas >= 0")
        name, namespace = statefulset_name(family), self.settings.namespace
        try:
            self.cluster.apps.read_namespaced_stateful_set(name, namespace)
        except ApiException as error:
            if error.status == 404:
                raise TargetError(f"no StatefulSet {name} in namespace {namespace}: deploy the {family} "
                                  f"family first (DeploymentSpec(replicas={{'{family}': N}}))") from None
            raise api_error(error, f"read StatefulSet {name}") from None
        if replicas > 0:
            self._raise_autoscaler_floor(name, replicas)
        try:
            self.cluster.apps.patch_namespaced_stateful_set_scale(name, namespace, {"spec": {"replicas": replicas}})
        except ApiException as error:
            raise api_error(error, f"scale StatefulSet {name}") from None

    def _raise_autoscaler_floor(self, name: str, replicas: int) -> None:
        autoscaling, namespace = self.cluster.autoscaling, self.settings.namespace
        try:
            hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler(name, namespace)
        except ApiException as error:
            if error.status == 404:
                return  # deployed without autoscaling
            raise api_error(error, f"read HorizontalPodAutoscaler {name}") from None
        patch = {"spec": {"minReplicas": replicas, "maxReplicas": max(hpa.spec.max_replicas, replicas)}}
        try:
            autoscaling.patch_namespaced_horizontal_pod_autoscaler(name, namespace, patch)
        except ApiException as error:
            raise api_error(error, f"patch HorizontalPodAutoscaler {name}") from None

    def run_loadtest(self, spec: LoadTestSpec, progress: Progress | None = None) -> LoadTestResult:
        """Replace any previous locust Jobs, run master + workers, and parse the master's stats."""
        report = progress or _quiet
        run_id = f"{int(time.time())}-{secrets.token_hex(3)}"
        deadline_s = spec.duration_s + self.settings.loadtest_overhead_s
        objects = loadtest_objects(render(self.settings.manifests), spec, run_id, self.settings.registry,
                                   int(deadline_s))
        gone_wait = self._waiting(self.settings.rollout_timeout_s)
        for name in ("locust-master", "locust-worker"):
            if self.cluster.delete("batch/v1", "Job", name, self.settings.namespace):
                wait_until_gone(lambda n=name: self.cluster.batch.read_namespaced_job(n, self.settings.namespace),
                                f"Job {name}", gone_wait, report)
        for obj in objects:
            self.cluster.apply(obj)
        report(f"locust run {run_id}: {spec.workers} worker(s), {spec.users} users for {spec.duration_s}s "
               f"against {spec.host}")
        run_pods = f"{LOADTEST_RUN_LABEL}={run_id}"
        waiting = self._waiting(deadline_s)
        try:
            outcome = wait_for_job(self.cluster, "locust-master", run_pods, waiting, report)
        finally:  # workers are useless without their master; the master Job stays for inspection
            self.cluster.delete("batch/v1", "Job", "locust-worker", self.settings.namespace)
        log = self._master_log(run_pods)
        if outcome == "Failed":
            tail = "\n".join(log.splitlines()[-20:])
            raise TargetError(f"the locust master failed; the last lines of its log:\n{tail}")
        result = result_from_log(log)
        report(f"locust run {run_id}: {result.aggregated.requests} requests, "
               f"{result.aggregated.rps:.0f} rps, p99 {result.aggregated.p99_ms:.0f} ms")
        return result

    def _master_log(self, run_pods: str) -> str:
        masters = pods(self.cluster, f"{run_pods},{LOCUST_ROLE_LABEL}=master")
        if not masters:
            raise TargetError("the locust master Job finished but its pod is gone, so its stats are lost: "
                              "check the Job's ttlSecondsAfterFinished and run again")
        name = masters[-1].metadata.name
        try:
            return self.cluster.core.read_namespaced_pod_log(name, self.settings.namespace, container="locust")
        except ApiException as error:
            raise api_error(error, f"read the log of pod {name}") from None

    def teardown(self, progress: Progress | None = None) -> None:
        """Delete the namespace (servers, control plane, Jobs, Secrets, volumes) and the project's
        cluster-scoped objects, and wait until the namespace is gone."""
        report = progress or _quiet
        namespace = self.settings.namespace
        if self.cluster.delete("v1", "Namespace", namespace):
            report(f"deleting namespace {namespace}")
            wait_until_gone(lambda: self.cluster.core.read_namespace(namespace), f"namespace {namespace}",
                            self._waiting(self.settings.rollout_timeout_s), report)
        for api_version, kind in CLUSTER_SCOPED:
            for name in list(self.cluster.labelled(api_version, kind, PART_OF_SELECTOR)):
                self.cluster.delete(api_version, kind, name)
                report(f"deleted {kind} {name}")
        report("teardown complete")


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise TargetError(f"{name}={value!r} is not a whole number of replicas") from None


def _ready(pod: V1Pod) -> bool:
    if pod.metadata.deletion_timestamp or not pod.status:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _quiet(_message: str) -> None:
    """The progress callback when the caller passes none."""
