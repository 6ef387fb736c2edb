"""Device tier budgets and usage between the control plane and a real tritonserver 2.51.

The device tier runs with the CPU standing in for the GPU (`device_tier_device=cpu`; no GPU here). What is
shown: the control plane's device budget reaches the pack runtime through the same Triton config override
as the residency budget, and `GET /api/v1/servers/{name}` shows what each tier holds as read from the
server's metrics by the reconciler's scrape.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from control_plane.app import create_app
from control_plane.db import Pack, Placement
from control_plane.placement import STUB_BASE_BYTES
from control_plane.reconcile import load_and_verify, resize
from control_plane.settings import Settings
from control_plane.traffic import parse
from fleet.client import infer_at
from fleet.triton_server import TritonServer
from fleet.waiting import wait_for

pytestmark = pytest.mark.slow
TOKEN = "tiers-token"
PACK = "tiered-api"


def _runtime_helpers():
    """test_pack_runtime.py's pack writer, loaded by path (its fixtures are not re-registered)."""
    path = Path(__file__).resolve().parent / "test_pack_runtime.py"
    spec = importlib.util.spec_from_file_location("_pack_runtime_helpers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


helpers = _runtime_helpers()
DEVICE_BUDGET = helpers.WIDE_BYTES * 5 // 2  # two wide members


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("tiers") / "repo"
    pack = helpers.PackBuilder(repository, PACK, device_tier_device="cpu", max_device_bytes=str(DEVICE_BUDGET),
                               generation="3")
    for k in range(3):
        pack.add(f"w{k}", helpers.wide(30 + k))
    pack.write()
    with TritonServer(repository, load_models=(PACK,)) as triton:
        yield triton


def infer(server: TritonServer, member: str) -> np.ndarray:
    return infer_at(server.grpc_url, PACK, {"INPUT__0": np.ones((1, 4), np.float32)}, member).as_numpy("OUTPUT__0")


def gpu_tier(server: TritonServer) -> dict | None:
    usage = parse(server.metrics()).tiers.get("gpu")
    return vars(usage) if usage else None


def test_the_placement_device_budget_reaches_the_runtime_through_the_config_override(server):
    triton = server.admin  # loading and verifying talk to Triton only
    one_member = helpers.WIDE_BYTES * 3 // 2
    result = load_and_verify(triton, PACK, generation=3, residency=64 * 2**20, device=one_member)
    assert (result.state, result.device_bytes, result.residency_bytes) == ("loaded", one_member, 64 * 2**20)
    wait_for(lambda: (gpu_tier(server) or {}).get("budget_bytes") == one_member, timeout_s=60,
             what="the reloaded stub's device budget on /metrics")
    for member in ("w0", "w1", "w0"):
        infer(server, member)
    tier = wait_for(lambda: (t := gpu_tier(server)) and t["loads"] >= 3 and t, timeout_s=60, what="promotions")
    assert tier["resident_members"] == 1 and tier["resident_bytes"] <= one_member  # the budget holds one

    resized = resize(triton, PACK, 3, 64 * 2**20, DEVICE_BUDGET)
    assert (resized.state, resized.device_bytes) == ("loaded", DEVICE_BUDGET)
    triton.http.close()  # an open keep-alive delays Triton's exit


@pytest.fixture
def control_plane(server, tmp_path):
    """A control plane (no reconciler thread) with the server registered as a gpu server with 3 GiB of GPU;
    stopping its reconciler closes its HTTP sessions (an open keep-alive delays Triton's exit)."""
    settings = Settings(api_token=TOKEN, database_url=f"sqlite:///{tmp_path / 'registry.db'}",
                        work_dir=tmp_path / "cp", repository_root=tmp_path)
    app = create_app(settings, start_reconciler=False)
    reconciler = app.extensions["fleet"].reconciler
    client = app.test_client()
    added = client.post("/api/v1/servers", headers={"Authorization": f"Bearer {TOKEN}"}, json={
        "name": "gpu-1", "family": "gpu", "http_url": server.http_url, "grpc_url": server.grpc_url,
        "metrics_url": server.metrics_url, "capacity_bytes": 2**30, "gpu_budget_bytes": 3 * 2**30})
    assert added.status_code == 201, added.get_data(as_text=True)
    yield app, client, added.get_json()
    reconciler.stop()


def test_the_reconciler_gives_each_pack_its_share_of_the_servers_gpu(server, control_plane):
    app, _, _ = control_plane
    state = app.extensions["fleet"]
    mib = 2**20
    with state.sessions.begin() as session:  # the pack reserves 1/4 of what is placed on the server
        session.add_all([Pack(name=PACK, family="gpu", kind="k", generation=3, built_generation=3),
                         Pack(name="neighbour", family="gpu", kind="k", generation=1, built_generation=1)])
        session.flush()
        session.add_all([Placement(pack=PACK, server="gpu-1", reserved_bytes=STUB_BASE_BYTES + 56 * mib),
                         Placement(pack="neighbour", server="gpu-1", retiring=True,  # not loaded, still counted
                                   reserved_bytes=3 * (STUB_BASE_BYTES + 56 * mib))])
    state.reconciler.loads.update()
    with state.sessions() as session:
        placement = session.get(Placement, (PACK, "gpu-1"))
        assert (placement.state, placement.error) == ("loaded", None)
        assert (placement.residency_bytes, placement.device_bytes) == (56 * mib, 3 * 2**30 // 4)
    wait_for(lambda: (gpu_tier(server) or {}).get("budget_bytes") == 3 * 2**30 // 4, timeout_s=60,
             what="the pack's share of the GPU on /metrics")


def test_the_servers_api_shows_what_each_tier_holds_from_one_scrape(server, control_plane):
    app, client, added = control_plane
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert added["tier_usage"] is None, "not scraped yet"
    for member in ("w0", "w1", "w2"):
        infer(server, member)
    wait_for(lambda: (gpu_tier(server) or {}).get("resident_members", 0) >= 1, timeout_s=60, what="a promotion")

    app.extensions["fleet"].reconciler.readings.update()  # one GET of /metrics: rates and tiers
    shown = client.get("/api/v1/servers/gpu-1", headers=headers).get_json()
    assert shown["tiers"]["gpu_bytes"] == 3 * 2**30
    usage = shown["tier_usage"]
    assert set(usage["tiers"]) == {"host", "gpu"} and usage["scraped_at"]
    now = parse(server.metrics()).tiers
    gpu, host = usage["tiers"]["gpu"], usage["tiers"]["host"]
    assert gpu["budget_bytes"] == now["gpu"].budget_bytes and host["budget_bytes"] == now["host"].budget_bytes
    assert 1 <= gpu["resident_members"] <= host["resident_members"]
    assert gpu["resident_bytes"] <= gpu["budget_bytes"]
    assert gpu["loads"] >= 1 and gpu["misses"] >= 1 and host["loads"] >= 1
    listed = client.get("/api/v1/servers", headers=headers).get_json()["items"]
    assert [s["tier_usage"]["tiers"]["gpu"]["budget_bytes"] for s in listed] == [gpu["budget_bytes"]]
