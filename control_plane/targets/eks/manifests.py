"""Rendered k8s/ manifests, tailored to one deployment or one load test.

k8s/overlays/all is the single source of every object (kubectl users apply the same files). The EKS
target renders it once and then only sets what a DeploymentSpec or LoadTestSpec decides at run time:
which families, how many servers, which images, where the repository is, the locust settings. Doing
that on the rendered objects, not in a generated kustomization, lets a host without kubectl (the
control-plane image) work from a pre-rendered file just as well.
"""
from __future__ import annotations

import copy
import hashlib
import json
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from control_plane.targets.base import ComputeFamily, DeploymentSpec, LoadTestSpec, TargetError
from fleet.resources import project_path

K8S_ROOT = project_path("k8s")  # the checkout's, or the wheel's copy (fleet/resources.py)
ALL_OVERLAY = K8S_ROOT / "overlays" / "all"

FAMILY_LABEL = "triton-fleet.io/family"
COMPONENT_LABEL = "app.kubernetes.io/component"
INSTANCE_LABEL = "app.kubernetes.io/instance"
PART_OF_SELECTOR = "app.kubernetes.io/part-of=triton-fleet"
LOCUST_ROLE_LABEL = "triton-fleet.io/locust-role"
LOADTEST_RUN_LABEL = "triton-fleet.io/loadtest-run"
REPOSITORY_CHECKSUM = "triton-fleet.io/repository-checksum"
ROLE_ARN_ANNOTATION = "eks.amazonaws.com/role-arn"
EXAMPLE_ACCOUNT = "111122223333"
IMAGE_PREFIX = "triton-fleet/"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Roles:
    """IAM role ARNs for the IRSA ServiceAccounts; None keeps what the manifests say."""

    repository_read: str | None = None
    control_plane: str | None = None


def render(source: Path) -> list[Manifest]:
    """A kustomization directory through `kubectl kustomize`, or a pre-rendered multi-document YAML file."""
    if source.is_dir():
        text = _kustomize(source)
    elif source.is_file():
        text = source.read_text()
    else:
        raise TargetError(f"no manifests at {source}: give a kustomization directory or a YAML file")
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _kustomize(directory: Path) -> str:
    try:
        done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True,
                              timeout=120, check=False)
    except FileNotFoundError:
        raise TargetError("kubectl not found: install kubectl 1.27+ (it bundles kustomize), or pass a "
                          "pre-rendered file (`kubectl kustomize k8s/overlays/all > all.yaml`)") from None
    if done.returncode != 0:
        raise TargetError(f"`kubectl kustomize {directory}` failed: {done.stderr.strip()}")
    return done.stdout


def labels(obj: Manifest) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def pod_spec(obj: Manifest) -> dict[str, Any] | None:
    """The pod template's spec of a workload (StatefulSet, Job), None for other kinds."""
    template = obj.get("spec", {}).get("template")
    return template["spec"] if template else None


def containers(obj: Manifest) -> Iterator[dict[str, Any]]:
    spec = pod_spec(obj)
    if spec:
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


def statefulset_name(family: ComputeFamily) -> str:
    return f"triton-{family}"


def parse_repository_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix, the only repository kind pods can sync from."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not prefix.strip("/"):
        raise TargetError(f"repository_uri must be s3://BUCKET/PREFIX on EKS (pods sync from S3), got {uri!r}")
    return bucket, prefix.strip("/")


def retag(objects: Iterable[Manifest], registry: str | None, tag: str | None) -> None:
    """Point the project's images at a registry (e.g. an ECR URI) and a tag, as kustomize `images:` would."""
    for obj in objects:
        for container in containers(obj):
            image: str = container["image"]
            if not image.startswith(IMAGE_PREFIX):
                continue
            name, _, current = image.partition(":")
            if registry:
                name = f"{registry.rstrip('/')}/{name}"
            version = tag or current
            container["image"] = f"{name}:{version}" if version else name


def deployment_objects(rendered: list[Manifest], spec: DeploymentSpec, namespace: str,
                       roles: Roles, registry: str | None, autoscaling: bool) -> list[Manifest]:
    """The objects `deploy` applies: shared ones, the control plane and the server families named in
    spec.replicas (a family left out is not touched; one set to 0 is scaled to none)."""
    def wanted(obj: Manifest) -> bool:
        family = labels(obj).get(FAMILY_LABEL)
        return (labels(obj).get(INSTANCE_LABEL) != "locust"
                and (family is None or family in spec.replicas)
                and (autoscaling or obj["kind"] != "HorizontalPodAutoscaler"))

    objects = [copy.deepcopy(obj) for obj in rendered if wanted(obj)]
    _check_namespace(objects, namespace)
    retag(objects, registry, spec.image_tag)
    checksum = _set_repository(objects, spec)
    _set_roles(objects, roles)
    for obj in objects:
        family = labels(obj).get(FAMILY_LABEL)
        if obj["kind"] == "StatefulSet" and family:
            obj["spec"]["replicas"] = spec.replicas[family]
            annotations = obj["spec"]["template"]["metadata"].setdefault("annotations", {})
            annotations[REPOSITORY_CHECKSUM] = checksum  # a new repository rolls the servers
        elif obj["kind"] == "HorizontalPodAutoscaler" and family and spec.replicas[family] > 0:
            # The requested count is the floor; the autoscaler adds servers above it under load. At 0
            # servers the autoscaler stands still (Kubernetes disables it while the target has none).
            obj["spec"]["minReplicas"] = spec.replicas[family]
            obj["spec"]["maxReplicas"] = max(obj["spec"]["maxReplicas"], spec.replicas[family])
    return objects


def _check_namespace(objects: list[Manifest], namespace: str) -> None:
    found = {obj["metadata"]["namespace"] for obj in objects if "namespace" in obj["metadata"]}
    if found != {namespace}:
        raise TargetError(f"the manifests render into namespace(s) {sorted(found)} but the target is set "
                          f"up for {namespace!r}: change one to match the other")


def _set_repository(objects: list[Manifest], spec: DeploymentSpec) -> str:
    """Write the repository location into the fleet-repository ConfigMap; return a checksum of it."""
    bucket, prefix = parse_repository_uri(spec.repository_uri)
    for obj in objects:
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "fleet-repository":
            data = obj.setdefault("data", {})
            data.update(bucket=bucket, prefix=prefix)
            if spec.region:
                data["region"] = spec.region
            return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    raise TargetError("the manifests have no ConfigMap fleet-repository (k8s/base): render k8s/overlays/all")


def _set_roles(objects: list[Manifest], roles: Roles) -> None:
    chosen = {"triton-server": roles.repository_read, "control-plane": roles.control_plane}
    for obj in objects:
        if obj["kind"] != "ServiceAccount":
            continue
        annotations = obj["metadata"].get("annotations") or {}
        name = obj["metadata"]["name"]
        if chosen.get(name):
            annotations[ROLE_ARN_ANNOTATION] = chosen[name]
        if f":{EXAMPLE_ACCOUNT}:" in annotations.get(ROLE_ARN_ANNOTATION, ""):
            raise TargetError(
                f"ServiceAccount {name} still has the example IAM role {annotations[ROLE_ARN_ANNOTATION]}: "
                "create the role (docs/eks.md, step 5) and pass its ARN to the EKS target "
                "(EksSettings(roles=Roles(repository_read=..., control_plane=...)))"
            )


def loadtest_objects(rendered: list[Manifest], spec: LoadTestSpec, run_id: str, registry: str | None,
                     deadline_s: int) -> list[Manifest]:
    """The locust master Service and the two Jobs, unsuspended and set up for one run that Kubernetes
    stops after `deadline_s` whatever happens (a worker that never reaches its master, say)."""
    objects = [copy.deepcopy(obj) for obj in rendered if labels(obj).get(INSTANCE_LABEL) == "locust"]
    jobs = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Job"}
    if set(jobs) != {"locust-master", "locust-worker"}:
        raise TargetError("the manifests lack the locust-master and locust-worker Jobs (k8s/modules/locust)")
    retag(objects, registry, None)
    common = {"LOCUST_LOCUSTFILE": spec.locustfile, "LOCUST_HOST": spec.host, **spec.env}
    master_env = {**common, "LOCUST_USERS": str(spec.users), "LOCUST_SPAWN_RATE": str(spec.spawn_rate),
                  "LOCUST_RUN_TIME": f"{spec.duration_s}s", "LOCUST_EXPECT_WORKERS": str(spec.workers)}
    for job, env in ((jobs["locust-master"], master_env), (jobs["locust-worker"], common)):
        job["spec"]["suspend"] = False
        job["spec"]["activeDeadlineSeconds"] = deadline_s
        job["spec"]["template"]["metadata"]["labels"][LOADTEST_RUN_LABEL] = run_id
        for container in containers(job):
            set_env(container, env)
    jobs["locust-worker"]["spec"]["parallelism"] = spec.workers
    jobs["locust-worker"]["spec"]["completions"] = spec.workers
    return objects


def set_env(container: dict[str, Any], values: dict[str, str]) -> None:
    """Set environment variables on a container, replacing any of the same name."""
    env = [e for e in container.get("env", []) if e["name"] not in values]
    env.extend({"name": name, "value": value} for name, value in values.items())
    container["env"] = env
