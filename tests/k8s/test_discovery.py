"""EKS discovery against the Kubernetes API emulator: Triton pods behind the Service's EndpointSlices are
registered as servers, leave when their endpoint goes, and servers discovery did not add are never touched."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from kubernetes import client

from control_plane.db import Pack, Placement, Server, make_engine, make_sessionmaker
from control_plane.discovery import DiscoveryError, DiscoverySettings, discover
from control_plane.migrate import upgrade

from .conftest import NAMESPACE


@pytest.fixture
def sessions(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    upgrade(engine)
    return make_sessionmaker(engine)


@pytest.fixture
def settings() -> DiscoverySettings:
    return DiscoverySettings(target="eks", namespace=NAMESPACE)


def add_service(api: client.ApiClient, name: str, family: str) -> None:
    client.CoreV1Api(api).create_namespaced_service(NAMESPACE, {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "inference-server",
                                              "triton-fleet.io/family": family}},
        "spec": {"clusterIP": "None", "selector": {"app": name},
                 "ports": [{"name": "http", "port": 8000}, {"name": "grpc", "port": 8001}]}})


def add_pod(api: client.ApiClient, name: str, memory: str | None) -> None:
    resources = {"limits": {"memory": memory}} if memory else {}
    client.CoreV1Api(api).create_namespaced_pod(NAMESPACE, {
        "metadata": {"name": name}, "spec": {"containers": [{"name": "triton", "image": "triton",
                                                            "resources": resources}]}})


def set_endpoints(api: client.ApiClient, service: str, pods: dict[str, tuple[str, bool]]) -> None:
    """What the EndpointSlice controller writes: one endpoint per pod with its address and readiness."""
    discovery = client.DiscoveryV1Api(api)
    body = {"metadata": {"name": f"{service}-abcde", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8000}, {"name": "grpc", "port": 8001}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready},
                           "targetRef": {"kind": "Pod", "name": pod, "namespace": NAMESPACE}}
                          for pod, (ip, ready) in pods.items()]}
    existing = discovery.list_namespaced_endpoint_slice(NAMESPACE).items
    if any(s.metadata.name == body["metadata"]["name"] for s in existing):
        discovery.patch_namespaced_endpoint_slice(body["metadata"]["name"], NAMESPACE, body)
    else:
        discovery.create_namespaced_endpoint_slice(NAMESPACE, body)


def servers(sessions) -> dict[str, Server]:
    with sessions() as session:
        return {s.name: s for s in session.query(Server)}


def test_ready_triton_pods_are_registered_and_leave_when_their_endpoint_goes(api_client, sessions, settings):
    add_service(api_client, "triton-cpu", "cpu")
    add_service(api_client, "triton-gpu", "gpu")
    add_pod(api_client, "triton-cpu-0", "12Gi")
    add_pod(api_client, "triton-cpu-1", None)
    add_pod(api_client, "triton-gpu-0", "30Gi")
    set_endpoints(api_client, "triton-cpu", {"triton-cpu-0": ("10.0.0.10", True),
                                             "triton-cpu-1": ("10.0.0.11", False)})
    set_endpoints(api_client, "triton-gpu", {"triton-gpu-0": ("10.0.1.10", True)})
    with sessions.begin() as session:  # a server someone added by hand: never discovery's to remove
        session.add(Server(name="on-prem-1", family="cpu", http_url="http://10.9.9.9:8000", grpc_url="10.9.9.9:8001",
                           capacity_bytes=2**33, healthy=True, last_seen=datetime.now(UTC)))

    result = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert result.added == ["eks-triton-cpu-0", "eks-triton-gpu-0"], "a pod that is not ready is not a server"
    found = servers(sessions)
    assert (found["eks-triton-cpu-0"].grpc_url, found["eks-triton-cpu-0"].http_url) == \
        ("10.0.0.10:8001", "http://10.0.0.10:8000")
    assert found["eks-triton-cpu-0"].capacity_bytes == 12 * 2**30 and found["eks-triton-gpu-0"].family == "gpu"

    # Scale-out: the second pod becomes ready. Scale-in: the first one's endpoint goes; its placements go too.
    with sessions.begin() as session:
        session.add(Pack(name="p", family="cpu", kind="k"))
        session.flush()
        session.add(Placement(pack="p", server="eks-triton-cpu-0", state="loaded"))
    set_endpoints(api_client, "triton-cpu", {"triton-cpu-1": ("10.0.0.11", True)})
    result = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert result.added == ["eks-triton-cpu-1"] and result.removed == ["eks-triton-cpu-0"]
    assert servers(sessions)["eks-triton-cpu-1"].capacity_bytes == settings.capacity_bytes  # no limit declared
    assert set(servers(sessions)) == {"eks-triton-cpu-1", "eks-triton-gpu-0", "on-prem-1"}
    with sessions() as session:
        assert session.query(Placement).count() == 0

    again = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert (again.added, again.removed) == ([], [])


def test_an_unreachable_api_changes_nothing_and_says_what_the_role_needs(sessions, settings, api_client):
    add_service(api_client, "triton-cpu", "cpu")
    add_pod(api_client, "triton-cpu-0", None)
    set_endpoints(api_client, "triton-cpu", {"triton-cpu-0": ("10.0.0.10", True)})
    discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # nothing listens there
    with client.ApiClient(configuration) as dead:
        with pytest.raises(DiscoveryError, match="cannot reach the Kubernetes API .* nothing was registered"):
            discover(sessions, discovery=settings, platform_factory=lambda: dead)
    assert set(servers(sessions)) == {"eks-triton-cpu-0"}, "a failed round deregisters nobody"


def test_discovery_is_off_unless_a_target_is_set(sessions):
    assert discover(sessions, discovery=DiscoverySettings()) is None
    with pytest.raises(DiscoveryError, match="FLEET_DISCOVERY_CLUSTER"):
        discover(sessions, discovery=DiscoverySettings(target="ecs"))
