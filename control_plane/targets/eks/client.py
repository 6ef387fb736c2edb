"""The EKS target's connection to a cluster, and API failures turned into errors a user can act on.

Kept apart from the target so the rest of the code deals in objects and TargetErrors, never in
credentials, discovery or raw HTTP errors.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from kubernetes import client
from kubernetes.client import ApiClient, ApiException, Configuration
from kubernetes.config import incluster_config, kube_config
from kubernetes.config.config_exception import ConfigException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from control_plane.targets.base import TargetError

FIELD_MANAGER = "triton-fleet"


def load_api_client(context: str | None = None) -> ApiClient:
    """In-cluster credentials when running in a pod (the control plane), else the kubeconfig (a laptop)."""
    configuration = Configuration()
    try:
        incluster_config.load_incluster_config(client_configuration=configuration)
        return ApiClient(configuration)
    except ConfigException:
        pass
    try:
        kube_config.load_kube_config(context=context, client_configuration=configuration)
    except (ConfigException, OSError) as error:
        raise TargetError(
            f"no Kubernetes credentials: not running in a pod and no usable kubeconfig ({error}). "
            "Write one with `aws eks update-kubeconfig --region REGION --name CLUSTER` (or point "
            "KUBECONFIG at one), then retry."
        ) from None
    return ApiClient(configuration)


def api_error(error: ApiException, action: str) -> TargetError:
    """A TargetError for a failed API call, saying what was attempted and what to do about it."""
    message = _status_message(error)
    if error.status in (401, 403):
        return TargetError(
            f"the cluster refused to {action}: {message}. Your identity lacks the permission: check "
            "the EKS access entry (or aws-auth mapping) of your IAM principal, or the control plane's "
            "Role in k8s/modules/control-plane/rbac.yaml."
        )
    if error.status == 422:
        hint = ("; some fields cannot change in place (a StatefulSet's selector, serviceName or volume "
                "claims): delete it with `kubectl delete --cascade=orphan` and deploy again"
                if "Forbidden" in message or "immutable" in message else "")
        return TargetError(f"the cluster rejected the object while trying to {action}: {message}{hint}")
    return TargetError(f"failed to {action}: HTTP {error.status}: {message}")


def _status_message(error: ApiException) -> str:
    """The `message` of the Status object the API server returns, else its reason."""
    try:
        return str(json.loads(error.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(error.reason or error.body or "no details")


@dataclass
class Cluster:
    """Typed API groups and the dynamic client over one ApiClient, for one namespace."""

    api: ApiClient
    namespace: str

    @cached_property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @cached_property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @cached_property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @cached_property
    def autoscaling(self) -> client.AutoscalingV2Api:
        return client.AutoscalingV2Api(self.api)

    @cached_property
    def dynamic(self) -> DynamicClient:
        """Discovery-backed access to any kind, so rendered manifests apply without a per-kind table."""
        try:
            return DynamicClient(self.api)
        except ApiException as error:
            raise api_error(error, "discover the cluster's APIs") from None

    def serves_group(self, group: str) -> bool:
        """Whether an API group (e.g. custom.metrics.k8s.io) is registered with the API server."""
        try:
            self.dynamic.request("get", f"/apis/{group}")
        except ApiException as error:
            if error.status == 404:
                return False
            raise api_error(error, f"look up API group {group}") from None
        return True

    def resource(self, api_version: str, kind: str) -> Any:
        try:
            return self.dynamic.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            raise TargetError(
                f"the cluster does not serve {kind} ({api_version}): install the controller or CRD "
                "that provides it, or use a Kubernetes version that has it (1.30 or later)."
            ) from None

    def apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply (as `kubectl apply --server-side --force-conflicts`): the API server keeps
        fields other managers own, and force takes back the ones we declare (spec.replicas after the
        autoscaler moved it, a hand edit), because the deployment spec is the declared state."""
        resource = self.resource(obj["apiVersion"], obj["kind"])
        name = obj["metadata"]["name"]
        namespace = obj["metadata"].get("namespace") if resource.namespaced else None
        try:
            resource.server_side_apply(body=obj, name=name, namespace=namespace,
                                       field_manager=FIELD_MANAGER, force_conflicts=True)
        except ApiException as error:
            raise api_error(error, f"apply {obj['kind']} {name}") from None

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete one object (its dependents in the background); False when it was already gone."""
        resource = self.resource(api_version, kind)
        try:
            resource.delete(name=name, namespace=namespace, propagation_policy="Background")
        except ApiException as error:
            if error.status == 404:
                return False
            raise api_error(error, f"delete {kind} {name}") from None
        return True

    def labelled(self, api_version: str, kind: str, selector: str) -> Iterator[str]:
        """Names of cluster-scoped objects of one kind that carry a label selector."""
        try:
            found = self.resource(api_version, kind).get(label_selector=selector)
        except ApiException as error:
            raise api_error(error, f"list {kind} objects") from None
        for item in found.items:
            yield item.metadata.name
