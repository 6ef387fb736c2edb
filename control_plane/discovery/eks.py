"""EKS: the endpoints of the Triton Services' EndpointSlices, through the kubernetes client.

Why EndpointSlices: they are what the Service itself routes to (readiness included), are updated by the
cluster as pods come and go (HPA scale-out and scale-in), and name each endpoint's pod. A pod being
deleted stays in its slice with `conditions.terminating` (ready false, serving while its readiness probe
passes) for as long as its preStop hook runs: that is when discovery reports it `leaving`. The pod's own
deletionTimestamp says the same a little earlier (the slice controller may lag), so it is read too.
"""
from __future__ import annotations

import urllib3
from kubernetes import client
from kubernetes.client import ApiException
from kubernetes.utils import parse_quantity

from control_plane.discovery.base import Discovered, DiscoveryError, ServerState
from control_plane.targets.eks.manifests import FAMILY_LABEL
from fleet.settings import DiscoverySettings
from model_repository.server_names import EKS_PREFIX, eks_server_name

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TRITON_CONTAINER = "triton"


class EksDiscoverer:
    prefix = EKS_PREFIX

    def __init__(self, api: client.ApiClient, settings: DiscoverySettings) -> None:
        self.core, self.discovery, self.settings = client.CoreV1Api(api), client.DiscoveryV1Api(api), settings

    def list_servers(self) -> list[Discovered]:
        namespace = self.settings.namespace
        try:
            services = self.core.list_namespaced_service(namespace,
                                                         label_selector=self.settings.service_selector).items
            found = []
            for service in services:
                family = (service.metadata.labels or {}).get(FAMILY_LABEL, "cpu")
                slices = self.discovery.list_namespaced_endpoint_slice(
                    namespace, label_selector=f"{SERVICE_NAME_LABEL}={service.metadata.name}").items
                for endpoint_slice in slices:
                    ports = {p.name: p.port for p in endpoint_slice.ports or [] if p.name}
                    http, grpc = ports.get("http", self.settings.http_port), ports.get("grpc", self.settings.grpc_port)
                    for endpoint in endpoint_slice.endpoints or []:
                        pod = endpoint.target_ref.name if endpoint.target_ref else None
                        if not pod or not endpoint.addresses:
                            continue
                        capacity, deleting = self._pod(pod)
                        address = endpoint.addresses[0]
                        found.append(Discovered(name=eks_server_name(pod), family=family,
                                                http_url=f"http://{address}:{http}", grpc_url=f"{address}:{grpc}",
                                                capacity_bytes=capacity,
                                                state=_state(endpoint.conditions, deleting)))
        except ApiException as error:
            raise DiscoveryError(f"cannot list Triton endpoints in namespace {namespace}: HTTP {error.status} "
                                 f"{error.reason}; the control plane's role needs list on services and "
                                 "discovery.k8s.io endpointslices (get on pods)") from None
        except urllib3.exceptions.HTTPError as error:
            raise DiscoveryError(f"cannot reach the Kubernetes API at {self.core.api_client.configuration.host}: "
                                 f"{type(error).__name__}; nothing was registered or removed") from None
        # One pod in two slices (a slice being replaced): leaving wins over ready, ready over unready.
        chosen: dict[str, Discovered] = {}
        for server in found:
            if server.name not in chosen or RANK[server.state] > RANK[chosen[server.name].state]:
                chosen[server.name] = server
        return sorted(chosen.values(), key=lambda s: s.name)

    def _pod(self, pod: str) -> tuple[int, bool]:
        """The Triton container's memory limit (where the pod declares one), and whether the pod is being
        deleted. A pod that cannot be read (already gone) counts as being deleted."""
        try:
            found = self.core.read_namespaced_pod(pod, self.settings.namespace)
        except ApiException as error:
            return self.settings.capacity_bytes, error.status == 404
        deleting = found.metadata is not None and found.metadata.deletion_timestamp is not None
        for container in (found.spec.containers if found.spec else None) or []:
            limits = (container.resources.limits or {}) if container.resources else {}
            if container.name == TRITON_CONTAINER and "memory" in limits:
                return int(parse_quantity(limits["memory"])), deleting
        return self.settings.capacity_bytes, deleting


RANK = {"unready": 0, "ready": 1, "leaving": 2}


def _state(conditions, deleting: bool) -> ServerState:
    """An endpoint's conditions as a server state. Kubernetes: `ready` is false for every terminating
    endpoint; `terminating` is set once the pod is being deleted; unset conditions mean ready."""
    if deleting or (conditions is not None and conditions.terminating):
        return "leaving"
    return "unready" if conditions is not None and conditions.ready is False else "ready"
