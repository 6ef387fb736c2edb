"""Races through the real HTTP API: concurrent registrations, concurrent load/unload, and a control plane
killed with SIGKILL while it is placing and loading packs."""
from __future__ import annotations

import collections
import random
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from control_plane.registry import artifacts_prefix
from control_plane.settings import Settings
from fleet.waiting import wait_for
from model_repository.generator import example_inputs
from model_repository.manifest import Manifest

from .conftest import BUCKET, api, infer, kill_control_plane, model, register, servable, sql, url

pytestmark = pytest.mark.slow
PACK_SIZE = 8  # FLEET_PACK_SIZE of the stack


def audit(stack, action: str) -> collections.Counter:
    return collections.Counter(row[0] for row in sql(stack, "SELECT subject FROM audit_log WHERE action = :action",
                                                     action=action))


def artifacts(stack, name: str) -> list[str]:
    folder = artifacts_prefix(Settings(repository_uri=stack["cp"].env["FLEET_REPOSITORY_URI"]))
    listing = stack["s3"].client().list_objects_v2(Bucket=BUCKET, Prefix=f"{folder}{name}/")
    return [o["Key"].removeprefix(folder) for o in listing.get("Contents", [])]


def test_fifty_concurrent_registrations_register_every_model_exactly_once(stack, generated_models):
    models = Manifest.read(generated_models).models
    same = models[:20]          # each registered twice with the same bytes
    clashing = models[20:30]    # five names, each registered with two different artifacts
    requests_ = [(f"race-{e.id}", e) for e in same for _ in range(2)]
    requests_ += [(f"race-clash-{k}", e) for k, e in enumerate(clashing[:5])]
    requests_ += [(f"race-clash-{k}", e) for k, e in enumerate(clashing[5:10])]
    assert len(requests_) == 50
    random.Random(8).shuffle(requests_)

    started = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda job: (job[0], job[1], register(stack, job[1], generated_models,
                                                                       name=job[0])), requests_))
    elapsed = time.monotonic() - started
    by_name: dict[str, list[int]] = collections.defaultdict(list)
    winners = {}
    for name, entry, response in statuses:
        by_name[name].append(response.status_code)
        if response.status_code == 201:
            winners[name] = entry.sha256
    for name, codes in by_name.items():
        expected = [201, 409] if name.startswith("race-clash-") else [200, 201]
        assert sorted(codes) == expected, (name, codes)

    listed = api(stack).get(url(stack, "/models"), params={"name_prefix": "race-", "per_page": 1000}).json()
    assert listed["total"] == 25
    assert {m["name"]: m["sha256"] for m in listed["items"]} == winners
    registered = audit(stack, "model.register")
    assert all(registered[name] == 1 for name in by_name), registered
    for name in by_name:
        assert len(api(stack).get(url(stack, f"/models/{name}/versions")).json()["items"]) == 1
        # The losing artifact of a clash is removed again: one object per registered model.
        assert artifacts(stack, name) == [f"{name}/{winners[name]}.pt"], name
    packs = collections.Counter(m["pack"] for m in listed["items"])
    sizes = dict(sql(stack, "SELECT pack, count(*) FROM models GROUP BY pack"))
    assert max(sizes[p] for p in packs) <= PACK_SIZE, sizes
    wait_for(lambda: all(servable(stack, name) for name in by_name), timeout_s=240)
    print(f"\n50 concurrent registrations: {elapsed:.1f} s; 25 models, each registered once, all servable")


def test_concurrent_load_and_unload_of_the_same_models_end_consistent(stack, generated_models):
    entries = {e.id: e for e in Manifest.read(generated_models).models}
    names = [m["name"] for m in api(stack).get(url(stack, "/models"), params={
        "name_prefix": "race-mlp", "per_page": 1000}).json()["items"]]
    pack = model(stack, names[0])["pack"]
    names = [n for n in names if model(stack, n)["pack"] == pack][:3]
    assert len(names) >= 2
    calls = [(name, random.Random(i).choice(["load", "unload"])) for i in range(40) for name in names][:40]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda c: api(stack).post(url(stack, f"/models/{c[0]}/{c[1]}"), timeout=60),
                                  calls))
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses if r.status_code != 202][:2]
    desired = {name: model(stack, name)["status"] != "unloaded" for name in names}

    def converged():
        placements = [p for p in api(stack).get(url(stack, "/placements")).json()["items"] if p["pack"] == pack]
        if any(p["state"] != "loaded" or p["loaded_generation"] != p["generation"] for p in placements):
            return False
        if any(desired.values()) and len(placements) != min(2, len(stack["servers"])):  # replicas_min 2
            return False
        return all((servable(stack, n) is not None) == want for n, want in desired.items())
    wait_for(converged, timeout_s=120)
    for name, want in desired.items():
        entry = entries[name.removeprefix("race-")]
        (x,) = example_inputs(entry, batch=1)
        if want:
            served = servable(stack, name)
            assert infer(served["endpoints"][0]["grpc_url"], pack, name, x).shape[0] == 1
        else:
            for server, _ in stack["servers"].values():
                with pytest.raises(InferenceServerException):
                    infer(server.grpc_url, pack, name, x)
    for name in names:  # leave them servable for the tests that follow
        api(stack).post(url(stack, f"/models/{name}/load"))
    wait_for(lambda: all(servable(stack, n) for n in names), timeout_s=120)


def test_a_control_plane_killed_mid_placement_converges_after_restart(stack, generated_models):
    entries = [e for e in Manifest.read(generated_models).models if e.architecture == "text"][10:16]
    names = [f"restart-{e.id}" for e in entries]
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda e: register(stack, e, generated_models, name=f"restart-{e.id}").status_code,
                              entries))
    assert codes == [201] * 6
    time.sleep(0.7)  # the reconciler is now building, publishing or loading the new pack(s)
    kill_control_plane(stack)
    started = time.monotonic()
    stack["cp"].start()
    wait_for(lambda: all(servable(stack, name) for name in names), timeout_s=180)
    took = time.monotonic() - started
    listed = api(stack).get(url(stack, "/models"), params={"name_prefix": "restart-"}).json()
    assert sorted(m["name"] for m in listed["items"]) == sorted(names)
    assert {m["name"]: m["sha256"] for m in listed["items"]} == {f"restart-{e.id}": e.sha256 for e in entries}
    placements = api(stack).get(url(stack, "/placements")).json()["items"]
    per_pack = collections.Counter(p["pack"] for p in placements)
    assert all(n == min(2, len(stack["servers"])) for n in per_pack.values()), per_pack  # replicas_min 2
    for entry, name in zip(entries, names, strict=True):
        served = servable(stack, name)
        (x,) = example_inputs(entry, batch=1)
        out = infer(served["endpoints"][0]["grpc_url"], served["pack"], name, x)
        assert out.shape[0] == 1 and np.isfinite(out).all()
    print(f"\ncontrol plane SIGKILLed mid-placement: all 6 new models servable {took:.1f} s after restart")
