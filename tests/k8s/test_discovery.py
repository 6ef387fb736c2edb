"""EKS discovery against the Kubernetes API emulator: Triton pods behind the Service's EndpointSlices are
registered as servers; a terminating pod is drained (its placements kept) and removed only when its endpoint
goes; servers discovery did not add are never touched; and the rendered manifests switch discovery on under
the names the pods' sync containers read their assignments by."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from kubernetes import client

from control_plane.db import AuditEntry, Pack, Placement, Server, make_engine, make_sessionmaker
from control_plane.discovery import DiscoveryError, DiscoverySettings, discover
from control_plane.migrate import upgrade
from control_plane.targets.base import DeploymentSpec
from control_plane.targets.eks.manifests import (
    ALL_OVERLAY,
    FAMILY_LABEL,
    Roles,
    containers,
    deployment_objects,
    pod_spec,
    render,
)
from model_repository.server_names import eks_server_name as server_name

from .conftest import CONTROL_PLANE_ROLE, NAMESPACE, REPOSITORY_ROLE


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


def add_pod(api: client.ApiClient, name: str, memory: str | None, deleting: bool = False) -> None:
    resources = {"limits": {"memory": memory}} if memory else {}
    metadata = {"name": name}
    if deleting:  # what the API server sets when the pod is deleted, for its grace period
        metadata.update(deletionTimestamp=datetime.now(UTC).isoformat(), deletionGracePeriodSeconds=300)
    client.CoreV1Api(api).create_namespaced_pod(NAMESPACE, {
        "metadata": metadata, "spec": {"containers": [{"name": "triton", "image": "triton",
                                                       "resources": resources}]}})


def conditions(state: bool | str) -> dict:
    """An endpoint's conditions as the EndpointSlice controller writes them. A terminating pod is never
    `ready`; it stays `serving` while its readiness probe passes (during its preStop hook)."""
    if state == "terminating":
        return {"ready": False, "serving": True, "terminating": True}
    return {"ready": state, "serving": state, "terminating": False}


def set_endpoints(api: client.ApiClient, service: str, pods: dict[str, tuple[str, bool | str]]) -> None:
    """What the EndpointSlice controller writes: one endpoint per pod with its address and conditions."""
    discovery = client.DiscoveryV1Api(api)
    body = {"metadata": {"name": f"{service}-abcde", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8000}, {"name": "grpc", "port": 8001}],
            "endpoints": [{"addresses": [ip], "conditions": conditions(state),
                           "targetRef": {"kind": "Pod", "name": pod, "namespace": NAMESPACE}}
                          for pod, (ip, state) in pods.items()]}
    existing = discovery.list_namespaced_endpoint_slice(NAMESPACE).items
    if any(s.metadata.name == body["metadata"]["name"] for s in existing):
        discovery.patch_namespaced_endpoint_slice(body["metadata"]["name"], NAMESPACE, body)
    else:
        discovery.create_namespaced_endpoint_slice(NAMESPACE, body)


def servers(sessions) -> dict[str, Server]:
    with sessions() as session:
        return {s.name: s for s in session.query(Server)}


def placements(sessions) -> list[tuple[str, str]]:
    with sessions() as session:
        return sorted((p.pack, p.server) for p in session.query(Placement))


def audit(sessions, subject: str) -> list[str]:
    with sessions() as session:
        return [e.action for e in session.query(AuditEntry).filter_by(subject=subject).order_by(AuditEntry.id)]


def place(sessions, pack: str, server: str) -> None:
    with sessions.begin() as session:
        if session.get(Pack, pack) is None:
            session.add(Pack(name=pack, family="cpu", kind="k"))
            session.flush()
        session.add(Placement(pack=pack, server=server, state="loaded"))


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


def test_a_terminating_pod_is_drained_keeps_its_placements_and_goes_only_when_its_endpoint_goes(
        api_client, sessions, settings):
    add_service(api_client, "triton-cpu", "cpu")
    for pod in ("triton-cpu-0", "triton-cpu-1", "triton-cpu-2"):
        add_pod(api_client, pod, "5Gi")
    ready = {"triton-cpu-0": ("10.0.0.10", True), "triton-cpu-1": ("10.0.0.11", True),
             "triton-cpu-2": ("10.0.0.12", True)}
    set_endpoints(api_client, "triton-cpu", ready)
    discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    place(sessions, "p", "eks-triton-cpu-0")
    place(sessions, "p", "eks-triton-cpu-1")

    # HPA scale-in: the pod is deleted; while its preStop hook runs, its endpoint is terminating.
    set_endpoints(api_client, "triton-cpu", {**ready, "triton-cpu-0": ("10.0.0.10", "terminating")})
    result = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert result.leaving == ["eks-triton-cpu-0"] and result.removed == []
    found = servers(sessions)
    assert found["eks-triton-cpu-0"].draining is True, "a leaving server gets no new replicas"
    assert placements(sessions) == [("p", "eks-triton-cpu-0"), ("p", "eks-triton-cpu-1")], \
        "its replicas stay until the reconciler has loaded them elsewhere"
    assert audit(sessions, "eks-triton-cpu-0")[-1] == "server.leaving"
    again = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert (again.leaving, again.removed) == ([], []), "a drain is started once"

    # The pod is gone: its endpoint leaves the slice, and the server and what it still held go.
    del ready["triton-cpu-0"]
    set_endpoints(api_client, "triton-cpu", ready)
    result = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert result.removed == ["eks-triton-cpu-0"]
    assert placements(sessions) == [("p", "eks-triton-cpu-1")]

    # A pod being deleted whose endpoint the slice controller has not updated yet: its deletionTimestamp says.
    add_pod(api_client, "triton-cpu-3", "5Gi", deleting=True)
    set_endpoints(api_client, "triton-cpu", {**ready, "triton-cpu-3": ("10.0.0.13", True)})
    result = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert result.added == [] and "eks-triton-cpu-3" not in servers(sessions), \
        "a pod that leaves before it was ever registered is not registered"
    place(sessions, "q", "eks-triton-cpu-2")
    client.CoreV1Api(api_client).patch_namespaced_pod("triton-cpu-2", NAMESPACE, {"metadata": {
        "deletionTimestamp": datetime.now(UTC).isoformat(), "deletionGracePeriodSeconds": 300}})
    result = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert result.leaving == ["eks-triton-cpu-2"] and ("q", "eks-triton-cpu-2") in placements(sessions)


def test_a_pod_that_fails_readiness_is_kept_and_one_that_comes_back_is_undrained_only_if_discovery_drained_it(
        api_client, sessions, settings):
    add_service(api_client, "triton-cpu", "cpu")
    for pod in ("triton-cpu-0", "triton-cpu-1"):
        add_pod(api_client, pod, None)
    ready = {"triton-cpu-0": ("10.0.0.10", True), "triton-cpu-1": ("10.0.0.11", True)}
    set_endpoints(api_client, "triton-cpu", ready)
    discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    place(sessions, "p", "eks-triton-cpu-0")

    # Triton answers "not ready" while a model loads: the server and its placements stay as they are.
    set_endpoints(api_client, "triton-cpu", {**ready, "triton-cpu-0": ("10.0.0.10", False)})
    result = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert (result.removed, result.leaving) == ([], []) and placements(sessions) == [("p", "eks-triton-cpu-0")]

    # A person drains cpu-1 (POST /servers/{name}/drain); discovery drains cpu-0 (terminating).
    with sessions.begin() as session:
        session.get(Server, "eks-triton-cpu-1").draining = True
        session.add(AuditEntry(action="server.drain", subject="eks-triton-cpu-1"))
    set_endpoints(api_client, "triton-cpu", {"triton-cpu-0": ("10.0.0.10", "terminating"),
                                             "triton-cpu-1": ("10.0.0.11", "terminating")})
    result = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert result.leaving == ["eks-triton-cpu-0"], "cpu-1 was draining already"

    # Both are listed ready again (the deletion was a StatefulSet pod replaced under the same name).
    set_endpoints(api_client, "triton-cpu", ready)
    result = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert result.returned == ["eks-triton-cpu-0"]
    found = servers(sessions)
    assert found["eks-triton-cpu-0"].draining is False
    assert found["eks-triton-cpu-1"].draining is True, "discovery never undoes a person's drain"
    assert audit(sessions, "eks-triton-cpu-0")[-2:] == ["server.leaving", "server.returned"]


def rendered_env(container: dict, namespace: str) -> dict[str, str]:
    """A container's environment as the kubelet resolves it: values, and the downward API's pod fields."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[item["name"]] = namespace
    return env


def test_the_rendered_fleet_discovers_every_family_s_pods_under_the_name_their_sync_reads(api_client, sessions):
    """The contract between the manifests and discovery: the control plane has discovery switched on, and for
    every Triton family the name discovery gives a pod is the --server its sync containers use. The objects
    are those the EKS target applies (the overlay, tailored to a deployment of every family)."""
    rendered = deployment_objects(render(ALL_OVERLAY), DeploymentSpec("s3://models/fleet", {"cpu": 1, "gpu": 1,
                                                                                          "inf2": 1}),
                                  NAMESPACE, Roles(REPOSITORY_ROLE, CONTROL_PLANE_ROLE), None, autoscaling=True)
    control_plane = next(o for o in rendered if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "control-plane")
    env = rendered_env(next(containers(control_plane)), control_plane["metadata"]["namespace"])
    settings = DiscoverySettings.from_env(env)
    assert settings.target == "eks" and settings.namespace == NAMESPACE

    families = [o for o in rendered if o["kind"] == "StatefulSet" and FAMILY_LABEL in o["metadata"]["labels"]]
    assert {o["metadata"]["labels"][FAMILY_LABEL] for o in families} == {"cpu", "gpu", "inf2"}
    expected = {}
    for index, statefulset in enumerate(families):
        service = next(o for o in rendered if o["kind"] == "Service"
                       and o["metadata"]["name"] == statefulset["spec"]["serviceName"])
        client.CoreV1Api(api_client).create_namespaced_service(NAMESPACE, {
            "metadata": {"name": service["metadata"]["name"], "labels": service["metadata"]["labels"]},
            "spec": {"clusterIP": "None", "ports": service["spec"]["ports"]}})
        pod = f"{statefulset['metadata']['name']}-0"  # a StatefulSet's first pod
        add_pod(api_client, pod, None)
        set_endpoints(api_client, service["metadata"]["name"], {pod: (f"192.168.{index}.10", True)})
        spec = pod_spec(statefulset)
        syncs = [c for c in spec["initContainers"] if c["name"].startswith("model-sync")]
        assert len(syncs) == 2, "the init sync and the sidecar"
        for sync in syncs:
            argv = " ".join(sync.get("command", []) + sync.get("args", []))
            server = argv.split("--server", 1)[1].split()[0]
            pod_name_vars = [e["name"] for e in sync["env"]
                             if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name"]
            assert pod_name_vars, f"{sync['name']} of {pod} has no variable holding its pod's name"
            for variable in pod_name_vars:
                server = server.replace(f"$({variable})", pod)
            assert server == server_name(pod), f"{sync['name']} of {pod} reads its assignment as {server}"
        expected[server_name(pod)] = statefulset["metadata"]["labels"][FAMILY_LABEL]

    result = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert result.added == sorted(expected)
    assert {name: s.family for name, s in servers(sessions).items()} == expected


def test_every_triton_pod_waits_for_its_drain_within_its_grace_period():
    """The preStop hook is the real command (it parses), waits on the drain with a deadline, and leaves
    Triton its own shutdown time inside terminationGracePeriodSeconds."""
    from fleet.commands.local import server_wait_drained

    families = [o for o in render(ALL_OVERLAY)
                if o["kind"] == "StatefulSet" and FAMILY_LABEL in o["metadata"]["labels"]]
    assert len(families) == 3
    for statefulset in families:
        spec = pod_spec(statefulset)
        triton = next(c for c in spec["containers"] if c["name"] == "triton")
        argv = triton["lifecycle"]["preStop"]["exec"]["command"]
        assert argv[:3] == ["fleet", "server", "wait-drained"], argv
        params = server_wait_drained.make_context("wait-drained", argv[3:]).params
        exit_timeout = next((int(a.split("=", 1)[1]) for a in triton["args"] if a.startswith("--exit-timeout-secs=")),
                            30)  # Triton's default
        assert params["timeout_s"] + exit_timeout < spec["terminationGracePeriodSeconds"], statefulset["metadata"]
        assert params["timeout_s"] >= 120, "a real-size drain needs minutes (docs/eks.md, Scale-in drains first)"
        assert params["triton_url"] == f"http://127.0.0.1:{triton['ports'][0]['containerPort']}"
        assert any(e["name"] == "TRITON_ADMIN_KEY" for e in triton["env"]), "the hook reads the index with the key"


def test_a_person_s_drain_of_a_server_discovery_drains_already_is_kept_when_the_pod_comes_back(
        api_client, tmp_path, settings):
    from control_plane.app import create_app
    from control_plane.settings import Settings

    app_settings = Settings(database_url=f"sqlite:///{tmp_path}/registry.db", api_token="t",
                            repository_uri="s3://models/repository", work_dir=tmp_path / "work")
    app = create_app(app_settings, start_reconciler=False)
    sessions = app.extensions["fleet"].sessions
    add_service(api_client, "triton-cpu", "cpu")
    add_pod(api_client, "triton-cpu-0", None)
    set_endpoints(api_client, "triton-cpu", {"triton-cpu-0": ("10.0.0.10", True)})
    discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    set_endpoints(api_client, "triton-cpu", {"triton-cpu-0": ("10.0.0.10", "terminating")})
    assert discover(sessions, discovery=settings, platform_factory=lambda: api_client).leaving == ["eks-triton-cpu-0"]

    response = app.test_client().post("/api/v1/servers/eks-triton-cpu-0/drain",
                                      headers={"Authorization": "Bearer t"})
    assert response.status_code == 200 and response.get_json()["draining"] is True
    set_endpoints(api_client, "triton-cpu", {"triton-cpu-0": ("10.0.0.10", True)})
    result = discover(sessions, discovery=settings, platform_factory=lambda: api_client)
    assert result.returned == [] and servers(sessions)["eks-triton-cpu-0"].draining is True
    assert audit(sessions, "eks-triton-cpu-0")[-2:] == ["server.leaving", "server.drain"]
