"""A Kubernetes API on loopback for the EKS target's tests, and the controllers it lacks.

kmock's KubernetesEmulator stores objects and serves discovery, CRUD and lists, but runs no controllers
and lacks some API-server behaviour. `ClusterEmulator` adds what the target relies on (server-side apply
creating objects, Namespace objects, typed lists filtered by label and field selectors, pod logs);
`Simulator` plays the controllers and kubelet, writing through the API the states a real cluster reaches
(pods Ready, Pending for lack of a GPU, stuck pulling an image, Jobs complete).
"""
from __future__ import annotations

import asyncio
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import pytest
import yaml
from kubernetes import client
from kubernetes.client import ApiException

from control_plane.targets.eks import EksSettings, EksTarget
from control_plane.targets.eks.manifests import K8S_ROOT, Roles, render

NAMESPACE = "triton-fleet"
REPOSITORY_ROLE = "arn:aws:iam::123456789012:role/triton-fleet-repository-read"
CONTROL_PLANE_ROLE = "arn:aws:iam::123456789012:role/triton-fleet-control-plane"
_LOG_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)$")


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what the target relies on and kmock 0.8 lacks: server-side apply creating
    objects, Namespace objects, typed lists with label/field selectors, and pod logs."""

    pod_logs: dict[tuple[str, str], str] = attrs.field(factory=dict)
    namespaces: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        with warnings.catch_warnings():  # kmock 0.8 reads its bundled file with a deprecated call
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()  # the built-in kinds of a recent cluster, without CRDs
        self["get", _LOG_PATH] << kmock.headers({"Content-Type": "text/plain"}) << self._serve_log
        # kmock reads /api/v1/namespaces/NAME as a namespace prefix, never as the Namespace object.
        self["patch", _NAMESPACE_PATH] << self._apply_namespace
        self["get", _NAMESPACE_PATH] << self._read_namespace
        self["delete", _NAMESPACE_PATH] << self._delete_namespace

    def _namespace_name(self, request: kmock.Request) -> str:
        return _NAMESPACE_PATH.match(request.url.path).group(1)

    async def _apply_namespace(self, request: kmock.Request) -> dict[str, Any]:
        name = self._namespace_name(request)
        self.namespaces[name] = {**self.namespaces.get(name, {}), **request.data}
        return self.namespaces[name]

    async def _read_namespace(self, request: kmock.Request) -> dict[str, Any]:
        if self._namespace_name(request) not in self.namespaces:
            raise kmock.KubernetesObjectNotFoundError()
        return self.namespaces[self._namespace_name(request)]

    async def _delete_namespace(self, request: kmock.Request) -> dict[str, Any]:
        """Deletes what the namespace held too, as the namespace controller would."""
        name = self._namespace_name(request)
        if name not in self.namespaces:
            raise kmock.KubernetesObjectNotFoundError()
        async with self._lock:
            for key in [key for key in self._objects if key[1] == name]:
                if not self._objects[key].deleted:
                    self._objects[key].delete()
        return self.namespaces.pop(name)

    async def _serve_log(self, request: kmock.Request) -> bytes:
        namespace, pod = _LOG_PATH.match(request.url.path).groups()
        if (namespace, pod) not in self.pod_logs:
            raise kmock.KubernetesObjectNotFoundError()
        return self.pod_logs[namespace, pod].encode()

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # kmock keeps every request for assertions and matches each new one against that history, which
        # makes a polling client quadratic. These tests assert on API state, so keep only this request.
        del self._requests[:-1]
        # Server-side apply creates the object when it does not exist; kmock only patches existing ones.
        content_type = request.headers.get("Content-Type", "")
        if (request.action == kmock.action.UPDATE and "apply-patch" in content_type
                and request.subresource is None):
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key not in self._objects:
                    self._objects[key] = request.data
                elif self._objects[key].deleted:
                    self._objects[key].create(request.data)
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        listing = await super()._serve_list(request)
        resource = request.resource
        listing["kind"] = f"{self.resources[resource].kind}List"  # kmock omits the list's type
        listing["apiVersion"] = f"{resource.group}/{resource.version}".lstrip("/")
        labels = request.params.get("labelSelector")
        fields = request.params.get("fieldSelector")
        listing["items"] = [item for item in listing["items"]
                            if (not labels or _labels_match(item, labels))
                            and (not fields or _fields_match(item, fields))]
        return listing


def _labels_match(item: dict[str, Any], selector: str) -> bool:
    """Equality-based label selectors (a=b, a!=b, a, !a), as the target sends them."""
    labels = item.get("metadata", {}).get("labels") or {}
    for term in selector.split(","):
        if "!=" in term:
            key, value = term.split("!=")
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = term.replace("==", "=").split("=")
            ok = labels.get(key) == value
        elif term.startswith("!"):
            ok = term[1:] not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def _fields_match(item: dict[str, Any], selector: str) -> bool:
    for term in selector.split(","):
        path, value = term.split("=")
        node: Any = item
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value:
            return False
    return True


class EmulatorServer:
    """ClusterEmulator on 127.0.0.1 in its own event-loop thread, for the synchronous kubernetes client."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.url = ""
        self.emulator: ClusterEmulator | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),),
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Kubernetes API emulator did not start")

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with ClusterEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def serve_custom_metrics(self) -> None:
        """Register custom.metrics.k8s.io, as the Prometheus adapter's APIService does."""
        assert self.emulator is not None
        self.emulator.resources["custom.metrics.k8s.io/v1beta1/pods"] = {"namespaced": True, "kind": "MetricValueList"}

    def set_log(self, pod: str, text: str, namespace: str = NAMESPACE) -> None:
        assert self.emulator is not None
        self.emulator.pod_logs[namespace, pod] = text

    def close(self) -> None:
        assert self._stop
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


class Simulator:
    """Plays the StatefulSet and Job controllers, the scheduler and the kubelet through the API."""

    def __init__(self, api: client.ApiClient, server: EmulatorServer) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.server = server
        self._stuck: set[str] = set()  # pods already given a lasting problem; written once, as in life

    # Nodes -------------------------------------------------------------------------------------------
    def add_node(self, name: str, instance_type: str, allocatable: dict[str, str]) -> None:
        self.core.create_node({"metadata": {"name": name, "labels": {
            "node.kubernetes.io/instance-type": instance_type}}, "status": {"allocatable": allocatable}})

    # StatefulSets and their pods ---------------------------------------------------------------------
    def statefulsets(self) -> list[client.V1StatefulSet]:
        return self.apps.list_namespaced_stateful_set(NAMESPACE).items

    def ensure_pods(self, sts: client.V1StatefulSet) -> list[str]:
        """Create the pods the StatefulSet controller would (name-0 .. name-(n-1)), Pending and unscheduled."""
        template = self.apps.api_client.sanitize_for_serialization(sts.spec.template)
        names = [f"{sts.metadata.name}-{i}" for i in range(sts.spec.replicas)]
        existing = {pod.metadata.name for pod in self.core.list_namespaced_pod(NAMESPACE).items}
        for name in names:
            if name not in existing:
                self.core.create_namespaced_pod(NAMESPACE, {
                    "metadata": {"name": name, "labels": template["metadata"]["labels"]},
                    "spec": {**template["spec"], "hostname": name, "subdomain": sts.spec.service_name},
                    "status": {"phase": "Pending"}})
        return names

    def roll_out(self, sts: client.V1StatefulSet) -> None:
        """Every pod Running and Ready, and the StatefulSet's status saying so."""
        if sts.status and sts.status.ready_replicas == sts.spec.replicas:
            return
        names = self.ensure_pods(sts)
        for i, name in enumerate(names):
            self.set_pod_status(name, phase="Running", pod_ip=f"10.0.0.{i + 10}", conditions=[
                _condition("PodScheduled", "True"), _condition("Ready", "True")])
        count = len(names)
        self.apps.patch_namespaced_stateful_set_status(sts.metadata.name, NAMESPACE, {"status": {
            "replicas": count, "readyReplicas": count, "updatedReplicas": count,
            "currentRevision": "rev-1", "updateRevision": "rev-1"}})

    def set_pod_status(self, name: str, phase: str, conditions: list[dict[str, Any]],
                       pod_ip: str | None = None, container_statuses: list[dict[str, Any]] | None = None) -> None:
        status: dict[str, Any] = {"phase": phase, "conditions": conditions}
        if pod_ip:
            status["podIP"] = pod_ip
        if container_statuses:
            status["containerStatuses"] = container_statuses
        self.core.patch_namespaced_pod_status(name, NAMESPACE, {"status": status})

    def unschedulable(self, pod: str, scheduler_message: str, since: datetime | None = None) -> None:
        """What the scheduler writes for a pod no node can take."""
        if pod in self._stuck:
            return
        self._stuck.add(pod)
        when = (since or datetime.now(UTC) - timedelta(minutes=10)).isoformat()
        self.set_pod_status(pod, phase="Pending", conditions=[
            _condition("PodScheduled", "False", reason="Unschedulable", message=scheduler_message,
                       last_transition_time=when)])
        self.warning_event(pod, "FailedScheduling", scheduler_message)

    def waiting(self, pod: str, container: str, image: str, reason: str, message: str) -> None:
        """What the kubelet writes for a container that cannot start."""
        if pod in self._stuck:
            return
        self._stuck.add(pod)
        self.set_pod_status(pod, phase="Pending", conditions=[_condition("PodScheduled", "True")],
                            container_statuses=[{"name": container, "image": image, "imageID": "",
                                                 "ready": False, "restartCount": 0,
                                                 "state": {"waiting": {"reason": reason, "message": message}}}])

    def warning_event(self, pod: str, reason: str, message: str) -> None:
        """An event, recorded once per pod and reason (a real cluster would bump its count)."""
        name = f"{pod}.{reason.lower()}"
        if not self._exists(lambda: self.core.read_namespaced_event(name, NAMESPACE)):
            self.core.create_namespaced_event(NAMESPACE, {
                "metadata": {"name": name, "namespace": NAMESPACE},
                "involvedObject": {"kind": "Pod", "name": pod, "namespace": NAMESPACE},
                "type": "Warning", "reason": reason, "message": message,
                "lastTimestamp": datetime.now(UTC).isoformat()})

    # Jobs -------------------------------------------------------------------------------------------
    def start_job(self, name: str) -> str | None:
        """The Job controller's first step: once a Job exists unsuspended, create its pod (named after
        the run). Returns the pod's name, None while there is nothing to start."""
        try:
            job = self.batch.read_namespaced_job(name, NAMESPACE)
        except ApiException:
            return None
        if job.spec.suspend:
            return None
        labels = dict(job.spec.template.metadata.labels, **{"job-name": name})
        pod = f"{name}-{labels['triton-fleet.io/loadtest-run']}"
        if not self._exists(lambda: self.core.read_namespaced_pod(pod, NAMESPACE)):
            spec = self.batch.api_client.sanitize_for_serialization(job.spec.template.spec)
            self.core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": pod, "labels": labels},
                                                        "spec": spec})
        return pod

    def run_job(self, name: str, outcome: str, log: str) -> None:
        """Start a Job's pod, write its log and finish the Job with `outcome` (Complete or Failed)."""
        pod = self.start_job(name)
        if pod is None or self.batch.read_namespaced_job(name, NAMESPACE).status:
            return
        self.server.set_log(pod, log)
        self.batch.patch_namespaced_job_status(name, NAMESPACE, {"status": {
            "conditions": [_condition(outcome, "True")], "succeeded" if outcome == "Complete" else "failed": 1}})

    @staticmethod
    def _exists(read: Callable[[], object]) -> bool:
        try:
            read()
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True


def _condition(kind: str, status: str, **extra: str) -> dict[str, str]:
    camel = {"last_transition_time": "lastTransitionTime"}
    return {"type": kind, "status": status, **{camel.get(k, k): v for k, v in extra.items()}}


class Background:
    """Runs a simulator step repeatedly in a thread, as controllers react while the target waits. Like a
    controller, a step that finds an object gone or changed under it (404, 409) just tries again."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def run(self, step: Callable[[], None], every_s: float = 0.05) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    step()
                except ApiException as error:
                    if error.status not in (404, 409):
                        self.errors.append(error)
                        return
                except BaseException as error:  # surfaced by the fixture after the test
                    self.errors.append(error)
                    return
                self._stop.wait(every_s)
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmulatorServer]:
    # The dynamic client caches API discovery in the temp dir; keep each test's cache to itself.
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    server = EmulatorServer()
    yield server
    server.close()


@pytest.fixture
def api_client(emulator: EmulatorServer) -> Iterator[client.ApiClient]:
    configuration = client.Configuration()
    configuration.host = emulator.url
    with client.ApiClient(configuration) as api:
        yield api


@pytest.fixture
def sim(api_client: client.ApiClient, emulator: EmulatorServer) -> Simulator:
    return Simulator(api_client, emulator)


@pytest.fixture
def background() -> Iterator[Background]:
    runner = Background()
    yield runner
    runner.stop()
    if runner.errors:
        raise runner.errors[0]


@pytest.fixture(scope="session")
def all_manifests() -> list[dict[str, Any]]:
    """k8s/overlays/all rendered once per session (kubectl kustomize takes ~0.1 s a call)."""
    return render(K8S_ROOT / "overlays" / "all")


@pytest.fixture(scope="session")
def rendered_all(tmp_path_factory: pytest.TempPathFactory, all_manifests: list[dict[str, Any]]) -> Path:
    """The same render as a file, so targets under test skip kubectl (as the control-plane image does)."""
    path = tmp_path_factory.mktemp("rendered") / "all.yaml"
    path.write_text(yaml.safe_dump_all(all_manifests))
    return path


@pytest.fixture
def make_target(api_client: client.ApiClient, rendered_all: Path) -> Callable[..., EksTarget]:
    """An EksTarget on the emulator with fast polling; keyword arguments override EksSettings. One
    control-plane replica (a trial on SQLite) unless a test asks for the manifests' count (None)."""
    def make(**overrides: Any) -> EksTarget:
        settings = dict(manifests=rendered_all, registry="123456789012.dkr.ecr.us-east-1.amazonaws.com",
                        roles=Roles(REPOSITORY_ROLE, CONTROL_PLANE_ROLE), rollout_timeout_s=10.0,
                        unschedulable_grace_s=0.0, poll_s=0.02, loadtest_overhead_s=10.0,
                        control_plane_replicas=1)
        settings.update(overrides)
        return EksTarget(EksSettings(**settings), api_client=api_client)
    return make
