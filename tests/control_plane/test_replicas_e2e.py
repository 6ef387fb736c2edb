"""Replicas on three real tritonservers: two per pack, spread; a draining server's replicas move before it
is emptied; a killed server's replicas keep answering on the survivors and are placed again."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from fleet.client import infer_at
from fleet.waiting import wait_for
from model_repository.generator import example_inputs

from .conftest import stack_on

pytestmark = pytest.mark.slow
SERVERS = ("r-a", "r-b", "r-c")
MODELS = 9


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, seaweed, generated_models):
    root = tmp_path_factory.mktemp("replicas")
    with stack_on(root, seaweed, "rep", servers=SERVERS, server_dead_after_s=2, pack_size=2).start() as stack:
        stack.register_servers(capacity_bytes=2 * 2**30, metrics=True)
        entries = stack.register_models(generated_models, MODELS)
        state = {"cp": stack.control_plane, "servers": stack.servers, "entries": entries}
        wait_for(lambda: all(len(model(state, e.id)["endpoints"]) == 2 for e in entries), timeout_s=180)
        yield state


def get(fleet, path: str) -> dict:
    response = fleet["cp"].api().get(f"{fleet['cp'].url}/api/v1{path}")
    assert response.status_code == 200, response.text
    return response.json()


def model(fleet, name: str) -> dict:
    return get(fleet, f"/models/{name}")


def usable(fleet) -> list[str]:
    return [s["name"] for s in get(fleet, "/servers")["items"] if s["healthy"] and not s["draining"]]


def replicas_settled(fleet) -> bool:
    """Every pack has min(2, usable servers) loaded replicas at its generation, on usable servers only."""
    want, servers = min(2, len(usable(fleet))), set(usable(fleet))
    by_pack: dict[str, list[dict]] = {}
    for p in get(fleet, "/placements")["items"]:
        by_pack.setdefault(p["pack"], []).append(p)
    return bool(by_pack) and all(
        len(ps) == want and all(p["state"] == "loaded" and p["loaded_generation"] == p["generation"]
                                and p["server"] in servers for p in ps) for ps in by_pack.values())


def infer(grpc_url: str, pack: str, entry) -> None:
    (x,) = example_inputs(entry, batch=1)
    assert infer_at(grpc_url, pack, {"INPUT__0": x}, entry.id).as_numpy("OUTPUT__0").shape[0] == 1


def test_each_pack_has_two_verified_replicas_spread_over_the_servers(fleet):
    wait_for(lambda: replicas_settled(fleet))
    servers = get(fleet, "/servers")["items"]
    holding = [s for s in servers if s["placed_packs"]]
    assert len(holding) >= 2
    for server in holding:
        assert 0 < server["reserved_bytes"] <= server["tiers"]["host_ram_bytes"]
        assert server["free_bytes"] == server["capacity_bytes"] - server["reserved_bytes"]
    entry = fleet["entries"][0]
    for endpoint in model(fleet, entry.id)["endpoints"]:  # every replica answers
        infer(endpoint["grpc_url"], model(fleet, entry.id)["pack"], entry)


def test_a_draining_server_s_replicas_move_before_it_is_emptied(fleet):
    wait_for(lambda: replicas_settled(fleet))
    victim = max(get(fleet, "/servers")["items"], key=lambda s: len(s["placed_packs"]))["name"]
    unservable: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # every model stays servable throughout the drain
        while not stop.is_set():
            for entry in fleet["entries"]:
                if model(fleet, entry.id)["status"] != "servable":
                    unservable.append(entry.id)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        response = fleet["cp"].api().post(f"{fleet['cp'].url}/api/v1/servers/{victim}/drain")
        assert response.status_code == 200 and response.json()["draining"] is True
        wait_for(lambda: get(fleet, f"/servers/{victim}")["placed_packs"] == [] and replicas_settled(fleet))
    finally:
        stop.set()
        watcher.join()
    assert unservable == [], f"models unservable during the drain: {sorted(set(unservable))}"


def test_a_killed_server_s_replicas_answer_on_the_survivors_and_are_placed_again(fleet):
    wait_for(lambda: replicas_settled(fleet))
    entries = fleet["entries"]
    before = {e.id: model(fleet, e.id) for e in entries}
    victim = before[entries[0].id]["endpoints"][0]["server"]
    server = fleet["servers"][victim]
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    # at once, before the control plane notices: another replica of every model answers
    for entry in entries:
        others = [e for e in before[entry.id]["endpoints"] if e["server"] != victim]
        assert others, f"{entry.id} had no replica besides {victim}"
        infer(others[0]["grpc_url"], before[entry.id]["pack"], entry)
    wait_for(lambda: not get(fleet, f"/servers/{victim}")["healthy"])
    wait_for(lambda: replicas_settled(fleet))
    assert all(model(fleet, e.id)["status"] == "servable" for e in entries)
