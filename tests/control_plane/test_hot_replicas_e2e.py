"""A hot pack gets an extra replica on three real tritonservers, and gives it back when traffic falls.

The control plane reads each server's request counters (Triton's `nv_inference_request_success` per pack,
control_plane/traffic.py) every tick; placement adds replicas to a pack whose rate per replica passes
FLEET_HOT_RPS_PER_REPLICA and removes one only when the rate per replica after removing it stays below
FLEET_COOL_RPS_PER_REPLICA (hysteresis). Thresholds are test-sized here (a few requests per second), so
the traffic of one `fleet.client` loop on two cores is plenty hot and a trickle of one request per second
is plenty cool. Every request of the test goes through `fleet.client`, and none may fail.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from control_plane.traffic import parse
from fleet.client import FleetClient
from fleet.triton_server import TritonServer
from fleet.waiting import wait_for
from model_repository.generator import example_inputs

from .conftest import TOKEN, stack_on

pytestmark = pytest.mark.slow
SERVERS = ("h-a", "h-b", "h-c")
HOT_RPS_PER_REPLICA, COOL_RPS_PER_REPLICA = 5.0, 2.0


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, seaweed, generated_models):
    """Three servers, two packs of two models each; every pack settled at two loaded replicas."""
    root = tmp_path_factory.mktemp("hot")
    # server_dead_after_s: not a test of failure detection; on a busy 2-core machine a server loading a pack
    # while it serves once missed its liveness answers for over the default 5 s and was declared dead.
    stack = stack_on(root, seaweed, "hot", servers=SERVERS, pack_size=2, replicas_min=2,
                     hot_rps_per_replica=HOT_RPS_PER_REPLICA, cool_rps_per_replica=COOL_RPS_PER_REPLICA,
                     server_dead_after_s=20)
    with stack.start():
        stack.register_servers(capacity_bytes=2 * 2**30, metrics=True)
        entries = stack.register_models(generated_models, 4)
        state = {"cp": stack.control_plane, "servers": stack.servers, "entries": entries}
        wait_for(lambda: settled_at_two(state), timeout_s=180, what="every pack loaded on two servers")
        yield state


def get(fleet, path: str) -> dict:
    response = fleet["cp"].api().get(f"{fleet['cp'].url}/api/v1{path}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def replicas(fleet) -> dict[str, set[str]]:
    """pack -> servers with a loaded replica of its current generation; a pack with any replica not in that
    state (pending, retiring) counts as unsettled and is left out, so callers compare settled sets only."""
    by_pack: dict[str, list[dict]] = {}
    for p in get(fleet, "/placements")["items"]:
        by_pack.setdefault(p["pack"], []).append(p)
    return {pack: {p["server"] for p in ps} for pack, ps in by_pack.items()
            if all(p["state"] == "loaded" and p["loaded_generation"] == p["generation"] and not p["retiring"]
                   for p in ps)}


def settled_at_two(fleet) -> bool:
    packs = {get(fleet, f"/models/{e.id}")["pack"] for e in fleet["entries"]}
    now = replicas(fleet)
    return None not in packs and set(now) == packs and all(len(servers) == 2 for servers in now.values())


def ticks(fleet) -> float:
    """Reconciler ticks run so far (the control plane's own fleet_reconcile_tick_seconds histogram)."""
    response = fleet["cp"].api().get(f"{fleet['cp'].url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return next(sample.value for family in text_string_to_metric_families(response.text)
                if family.name == "fleet_reconcile_tick_seconds" for sample in family.samples
                if sample.name.endswith("_count"))


def served_requests(server: TritonServer, pack: str, member: str) -> float:
    """Requests for this member that the server's pack runtime answered. Its per-member counter, not Triton's
    per-pack one: the latter also grew on a new replica that no client had called yet (the control plane's
    own requests, e.g. stub probes, count there)."""
    return parse(requests.get(server.metrics_url, timeout=5).text).members.get((pack, member), 0.0)


@dataclass
class Traffic:
    """Requests for one model through fleet.client on a few threads, paced or as fast as they go."""

    call: Callable[[], None]
    threads: int = 2
    every_s: float = 0.0  # pause between a thread's requests; 0: back to back
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.call()
                with self._lock:
                    self.ok += 1
            except Exception as error:  # noqa: BLE001 (every failure is the test's finding)
                with self._lock:
                    self.failures.append(repr(error))
            if self.every_s:
                self._stop.wait(self.every_s)  # pacing a load generator, not synchronising

    def __enter__(self) -> Traffic:
        self._workers = [threading.Thread(target=self._run) for _ in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)


def test_a_hot_pack_gets_a_third_replica_that_serves_and_gives_it_back_when_traffic_falls(fleet):
    entry = fleet["entries"][0]
    pack = get(fleet, f"/models/{entry.id}")["pack"]
    before = replicas(fleet)
    [third] = set(SERVERS) - before[pack]
    cold = {p: s for p, s in before.items() if p != pack}
    assert cold, "the test needs a second, cold pack to show it is left alone"
    baseline = served_requests(fleet["servers"][third], pack, entry.id)
    (x,) = example_inputs(entry, batch=1)
    with FleetClient(fleet["cp"].url, TOKEN, cache_ttl_s=1.0) as client:
        def call() -> None:
            assert client.infer(entry.id, [x])["OUTPUT__0"].shape[0] == 1

        with Traffic(call, threads=2, every_s=0.05) as hot:
            # Up to ~40 rps, far above 2 replicas x 5 rps: a third replica is placed, loaded and verified on
            # the third server, and the client (which re-resolves every second) sends it requests.
            wait_for(lambda: replicas(fleet).get(pack) == set(SERVERS), timeout_s=90,
                     what=f"{pack} loaded on all three servers")
            wait_for(lambda: served_requests(fleet["servers"][third], pack, entry.id) >= baseline + 20, timeout_s=30,
                     what=f"requests for {pack} reaching the new replica on {third}")
            # While the traffic stays hot, the extra replica stays: ten more reconcile ticks, each reading
            # the servers' counters afresh, without flapping.
            seen: list[set[str]] = []
            first_tick = ticks(fleet)

            def ten_more_ticks() -> bool:
                seen.append(replicas(fleet).get(pack, set()))
                return ticks(fleet) >= first_tick + 10

            wait_for(ten_more_ticks, timeout_s=60, interval_s=0.3, what="ten reconcile ticks")
            assert all(s == set(SERVERS) for s in seen if s), f"{pack} lost its extra replica while hot: {seen}"
            assert {p: s for p, s in replicas(fleet).items() if p != pack} == cold, "cold packs stay as they were"
        assert hot.ok > 0 and hot.failures == [], hot.failures[:5]

        with Traffic(call, threads=1, every_s=1.0) as trickle:
            # ~1 rps: below 2 replicas x 2 rps, so one replica goes; the trickle keeps asking meanwhile.
            wait_for(lambda: len(replicas(fleet).get(pack, ())) == 2, timeout_s=60,
                     what=f"{pack} back to two replicas")
            served, answered = replicas(fleet)[pack], trickle.ok
            wait_for(lambda: trickle.ok >= answered + 3, timeout_s=30, what="requests answered after the scale-in")
        assert trickle.failures == [], trickle.failures[:5]
    assert get(fleet, f"/models/{entry.id}")["status"] == "servable"
    assert {e["server"] for e in get(fleet, f"/models/{entry.id}")["endpoints"]} == served
