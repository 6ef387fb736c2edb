"""A scale-in through discovery on three real tritonservers: the server the platform reports leaving is
drained (its replicas loaded on the others first, then unloaded), its preStop command `fleet server
wait-drained` returns only then, clients of replicated models see no failed request, and the server is
removed once the platform stops listing it.

What cannot run here is the platform (EKS, ECS); the servers are real. So discovery is driven at its
boundary: the reconciler's discoverer is a `ListedServers` that lists the three local servers the way the
EKS discoverer lists pods (ready, leaving, gone), and each server syncs its own assignment from S3 as the
pods' sync sidecars do (no repository_path: the control plane never syncs them itself).
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests
from sqlalchemy import select
from waitress.server import create_server

from control_plane.app import create_app
from control_plane.db import AuditEntry
from control_plane.discovery import Discovered, DiscoverySettings
from control_plane.settings import Settings
from control_plane.uploads import body_limit, channel_class
from fleet.client import FleetClient
from fleet.stack import Stack, StackSpec, register_generated
from fleet.triton_server import TritonServer, free_port
from fleet.waiting import wait_for
from model_repository.generator import example_inputs
from model_repository.s3_sync import NoAssignment, SyncError, sync

from .conftest import ADMIN_KEY, TOKEN

pytestmark = pytest.mark.slow
SERVERS = ("eks-triton-cpu-0", "eks-triton-cpu-1", "eks-triton-cpu-2")
MODELS = 6  # three packs of two, two replicas each over three servers


class ListedServers:
    """The discoverer boundary: what the platform lists now. `leave` is a pod being deleted (its endpoint
    terminating, its preStop running); `forget` is the pod gone."""

    prefix = "eks-"

    def __init__(self, servers: dict[str, TritonServer]) -> None:
        self.lock = threading.Lock()
        self.states = dict.fromkeys(servers, "ready")
        self.servers = servers

    def list_servers(self) -> list[Discovered]:
        with self.lock:
            return [Discovered(name, "cpu", self.servers[name].http_url, self.servers[name].grpc_url, 2 * 2**30,
                               state) for name, state in sorted(self.states.items())]

    def leave(self, name: str) -> None:
        with self.lock:
            self.states[name] = "leaving"

    def forget(self, name: str) -> None:
        with self.lock:
            self.states.pop(name)


class Sidecars:
    """Each server's sync sidecar (`fleet sync --server NAME`), played by one thread for all three."""

    def __init__(self, uri: str, s3, servers: dict[str, TritonServer]) -> None:
        self.uri, self.s3, self.servers = uri, s3, servers
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="sidecars", daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for name, server in list(self.servers.items()):
                try:
                    sync(self.uri, server.repository, self.s3, server=name)
                except (NoAssignment, SyncError):
                    pass  # no assignment yet: the control plane has not placed anything there
            self.stop.wait(0.3)  # the sidecar's interval (30 s on EKS)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, seaweed, generated_models):
    root = tmp_path_factory.mktemp("scale-in")
    stack = Stack(StackSpec(root, servers=SERVERS, control_planes=0, admin_key=ADMIN_KEY, bucket="models"),
                  s3=seaweed).start()  # the control plane runs in this process, with discovery given
    servers = stack.servers
    uri = f"s3://models/scale-in-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in seaweed.environment().items():
            patch.setenv(key, value)
        settings = Settings(api_token=TOKEN, triton_admin_key=ADMIN_KEY,
                            database_url=f"sqlite:///{root / 'registry.db'}", work_dir=root / "work",
                            repository_root=root, repository_uri=uri, s3_endpoint_url=seaweed.endpoint_url,
                            reconcile_interval_s=0.5, server_dead_after_s=3, pack_size=2)
        app = create_app(settings, start_reconciler=False)
        state = app.extensions["fleet"]
        listed = ListedServers(servers)
        state.reconciler.discovery.settings = DiscoverySettings(target="eks", interval_s=0.5)
        state.reconciler.discovery.discoverer = listed  # the platform's answer, as the EKS discoverer gives it
        port = free_port()
        http = create_server(app, host="127.0.0.1", port=port, threads=8,
                             max_request_body_size=body_limit(settings) + 1)
        http.channel_class = channel_class(settings)
        threading.Thread(target=http.run, name="control-plane", daemon=True).start()
        state.leadership.start()
        state.reconciler.start()
        sidecars = Sidecars(uri, seaweed.client(), servers)
        sidecars.thread.start()
        url = f"http://127.0.0.1:{port}"
        api = requests.Session()
        api.headers["Authorization"] = f"Bearer {TOKEN}"
        fleet = {"url": url, "api": api, "servers": servers, "listed": listed, "sessions": state.sessions}
        try:
            wait_for(lambda: {s["name"] for s in get(fleet, "/servers")["items"]} == set(SERVERS), timeout_s=30,
                     what="discovery registers the three servers")
            fleet["entries"] = register_generated(url, TOKEN, generated_models, MODELS)
            wait_for(lambda: settled(fleet), timeout_s=180, what="two loaded replicas of every pack")
            yield fleet
        finally:
            sidecars.stop.set()
            state.reconciler.stop()
            state.leadership.stop()
            state.validator.close()
            http.close()
            stack.stop()


def get(fleet, path: str) -> dict:
    response = fleet["api"].get(f"{fleet['url']}/api/v1{path}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def settled(fleet) -> bool:
    """Every pack has two loaded replicas at its generation, on servers that are neither draining nor dead."""
    usable = {s["name"] for s in get(fleet, "/servers")["items"] if s["healthy"] and not s["draining"]}
    by_pack: dict[str, list[dict]] = {}
    for placement in get(fleet, "/placements")["items"]:
        by_pack.setdefault(placement["pack"], []).append(placement)
    return len(by_pack) == MODELS // 2 and all(
        len(ps) == 2 and all(p["state"] == "loaded" and p["loaded_generation"] == p["generation"]
                             and p["server"] in usable for p in ps) for ps in by_pack.values())


def wait_drained(server: TritonServer, timeout_s: float, admin_key: str | None = ADMIN_KEY) -> subprocess.Popen:
    """The pod's preStop hook, as the manifests run it."""
    env = {"PYTHONSAFEPATH": "1", "PATH": f"{sys.prefix}/bin:/usr/bin:/bin"}
    if admin_key:
        env["TRITON_ADMIN_KEY"] = admin_key
    return subprocess.Popen([sys.executable, "-m", "fleet.cli", "server", "wait-drained", "--triton-url",
                             server.http_url, "--timeout", str(timeout_s), "--interval", "0.3"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class Traffic:
    """Requests for every model through fleet.client, from one thread, until stopped."""

    def __init__(self, fleet) -> None:
        self.client = FleetClient(fleet["url"], TOKEN)
        self.entries = fleet["entries"]
        self.ok, self.failed = 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="traffic", daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for entry in self.entries:
                try:
                    self.client.infer(entry.id, example_inputs(entry, batch=1))
                    self.ok += 1
                except Exception as error:  # noqa: BLE001  every failure is the finding
                    self.failed.append(f"{entry.id}: {type(error).__name__}: {error}")

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        self.client.close()


def audit(fleet, after_id: int) -> list[AuditEntry]:
    with fleet["sessions"]() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.id > after_id).order_by(AuditEntry.id)))


def test_a_server_the_platform_reports_leaving_is_drained_without_a_failed_request_then_removed(fleet):
    wait_for(lambda: settled(fleet), what="two loaded replicas of every pack")
    victim = max(get(fleet, "/servers")["items"], key=lambda s: len(s["placed_packs"]))
    name, held = victim["name"], set(victim["placed_packs"])
    assert held, "the leaving server holds replicas"
    start_id = max((e.id for e in audit(fleet, 0)), default=0)

    with Traffic(fleet) as traffic:
        wait_for(lambda: traffic.ok >= 20, what="traffic flows")
        before = traffic.ok
        fleet["listed"].leave(name)  # the pod is deleted: its endpoint is terminating, its preStop starts
        started = time.monotonic()
        hook = wait_drained(fleet["servers"][name], timeout_s=120)
        output, _ = hook.communicate(timeout=150)
        drained_s = time.monotonic() - started
        assert hook.returncode == 0, output
        assert "drained: Triton at" in output and "has no model loaded" in output, output

        # When the hook returns, the server is still registered (still listed), holds nothing, and every
        # pack it held has two loaded replicas elsewhere.
        server = get(fleet, f"/servers/{name}")
        assert server["draining"] is True and server["placed_packs"] == []
        assert settled(fleet)
        during = traffic.ok - before

        # The pod is gone: no longer listed, its Triton stopped.
        fleet["listed"].forget(name)
        fleet["servers"][name].stop()
        wait_for(lambda: name not in {s["name"] for s in get(fleet, "/servers")["items"]}, timeout_s=30,
                 what=f"{name} removed once no longer listed")
        wait_for(lambda: traffic.ok >= before + during + 20, what="traffic after the removal")
    print(f"\nscale-in: drained in {drained_s:.1f} s; {traffic.ok} requests, {len(traffic.failed)} failed, "
          f"{during} during the drain")
    assert traffic.failed == [], f"failed requests during the scale-in: {traffic.failed[:5]}"
    assert during > 0, "requests were served while the server drained"

    # The order, from the audit log: leaving, then for each pack it held a replica loaded on another server,
    # and only after that the unload on the leaving server; removal last.
    entries = audit(fleet, start_id)
    actions = [(e.action, e.subject, (e.detail or {}).get("server"), (e.detail or {}).get("state")) for e in entries]
    leaving = actions.index(("server.leaving", name, None, None))
    for pack in held:
        unload = actions.index(("pack.unload", pack, name, None))
        loads = [i for i, (action, subject, server, state) in enumerate(actions)
                 if action == "pack.load" and subject == pack and server != name and state == "loaded"]
        assert any(leaving < i < unload for i in loads), f"{pack} was unloaded from {name} before a new replica loaded"
    assert actions.index(("server.gone", name, None, None)) > max(
        actions.index(("pack.unload", pack, name, None)) for pack in held)


def test_wait_drained_times_out_naming_what_is_still_loaded(fleet):
    wait_for(lambda: settled(fleet), what="two loaded replicas of every pack")
    holder = next(s for s in get(fleet, "/servers")["items"] if s["placed_packs"])
    hook = wait_drained(fleet["servers"][holder["name"]], timeout_s=2)
    output, _ = hook.communicate(timeout=60)
    assert hook.returncode == 1, output
    assert "still has" in output and "models loaded after 2 s" in output and holder["placed_packs"][0] in output
    assert "marked draining" in output, "it says what to check"

    hook = wait_drained(fleet["servers"][holder["name"]], timeout_s=2, admin_key=None)
    output, _ = hook.communicate(timeout=60)
    assert hook.returncode == 1 and "--admin-key" in output, output
