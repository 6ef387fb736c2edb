"""EKS: the ready endpoints of the Triton Services' EndpointSlices, through the kubernetes client.

Why EndpointSlices: they are what the Service itself routes to (readiness included), are updated by the
cluster as pods come and go (HPA scale-out and scale-in), and name each endpoint's pod.
"""
from __future__ import annotations

import urllib3
from kubernetes import client
from kubernetes.client import ApiException
from kubernetes.utils import parse_quantity

from control_plane.discovery.base import Discovered, DiscoveryError, DiscoverySettings
from control_plane.targets.eks_manifests import FAMILY_LABEL

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TRITON_CONTAINER = "triton"


class EksDiscoverer:
    prefix = "eks-"

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
                        ready = endpoint.conditions is None or endpoint.conditions.ready is not False
                        terminating = endpoint.conditions is not None and endpoint.conditions.terminating
                        pod = endpoint.target_ref.name if endpoint.target_ref else None
                        if not ready or terminating or not pod or not endpoint.addresses:
                            continue
                        address = endpoint.addresses[0]
                        found.append(Discovered(name=f"{self.prefix}{pod}", family=family,
                                                http_url=f"http://{address}:{http}", grpc_url=f"{address}:{grpc}",
                                                capacity_bytes=self._capacity(pod)))
        except ApiException as error:
            raise DiscoveryError(f"cannot list Triton endpoints in namespace {namespace}: HTTP {error.status} "
                                 f"{error.reason}; the control plane's role needs list on services and "
                                 "discovery.k8s.io endpointslices (get on pods)") from None
        except urllib3.exceptions.HTTPError as error:
            raise DiscoveryError(f"cannot reach the Kubernetes API at {self.core.api_client.configuration.host}: "
                                 f"{type(error).__name__}; nothing was registered or removed") from None
        return sorted({s.name: s for s in found}.values(), key=lambda s: s.name)

    def _capacity(self, pod: str) -> int:
        """The Triton container's memory limit, where the pod declares one."""
        try:
            spec = self.core.read_namespaced_pod(pod, self.settings.namespace).spec
        except ApiException:
            return self.settings.capacity_bytes
        for container in spec.containers or []:
            limits = (container.resources.limits or {}) if container.resources else {}
            if container.name == TRITON_CONTAINER and "memory" in limits:
                return int(parse_quantity(limits["memory"]))
        return self.settings.capacity_bytes
