"""A pack's Python-backend stub killed with SIGKILL: detected by the reconciler's stub probe and reloaded,
while the other packs keep serving.

Why the probe: after its stub dies, tritonserver 2.51 keeps answering /v2/models/{pack}/ready with 200
and fails every request to the pack with "Stub process '<pack>_0_0' is not healthy." until the model is
loaded again; it never restarts the stub on its own.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
import torch
from tritonclient.utils import InferenceServerException

from fleet.waiting import wait_for
from model_repository.generator import example_inputs
from model_repository.manifest import Manifest

from .conftest import infer, register, servable, sql

pytestmark = pytest.mark.slow


def stubs_of(server, pack: str) -> list[psutil.Process]:
    marker = f"/{pack}/1/model.py"
    found = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if any(marker in arg for arg in child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:
            continue
    return found


def stub_of(server, pack: str) -> psutil.Process:
    """The pack's one live stub (waits out the old instance of a reload that is still shutting down)."""
    return wait_for(lambda: (found := stubs_of(server, pack)) and len(found) == 1 and found[0], timeout_s=60)


def test_a_killed_stub_is_detected_and_its_pack_reloaded_while_other_packs_keep_serving(stack, generated_models):
    models = Manifest.read(generated_models).models
    victim_entry = next(m for m in models if m.architecture == "mlp")
    bystander_entry = next(m for m in models if m.architecture == "cnn")
    victim_name, bystander_name = f"stub-{victim_entry.id}", f"stub-{bystander_entry.id}"
    for entry, name in ((victim_entry, victim_name), (bystander_entry, bystander_name)):
        assert register(stack, entry, generated_models, name=name).status_code in (200, 201)
    # Every server holds a replica of each pack (two servers, two replicas): wait for both, so the replica
    # whose stub is killed below stays the one probed (a second replica loading later would otherwise take
    # over the model's first endpoint and hide the failure this test is about).
    every_server = len(stack.servers)
    victim = wait_for(lambda: (m := servable(stack, victim_name)) and len(m["endpoints"]) == every_server and m,
                      timeout_s=120)
    bystander = wait_for(lambda: servable(stack, bystander_name))
    assert victim["pack"] != bystander["pack"]

    (vx,) = example_inputs(victim_entry, batch=2, seed=3)
    (bx,) = example_inputs(bystander_entry, batch=2, seed=3)
    expected_b = torch.jit.load(str(generated_models / bystander_entry.file))(torch.from_numpy(bx)).detach().numpy()
    by_url = bystander["endpoints"][0]["grpc_url"]
    outcomes: list[tuple[float, str | None]] = []
    stop = threading.Event()

    def bystander_traffic():
        while not stop.is_set():
            try:
                out = infer(by_url, bystander["pack"], bystander_name, bx)
                np.testing.assert_allclose(out, expected_b, rtol=1e-5, atol=1e-5)
                outcomes.append((time.monotonic(), None))
            except (InferenceServerException, AssertionError) as error:
                outcomes.append((time.monotonic(), str(error)[:200]))
            time.sleep(0.02)

    traffic = threading.Thread(target=bystander_traffic, daemon=True)
    traffic.start()
    victim_endpoint = victim["endpoints"][0]
    server = stack.servers[victim_endpoint["server"]]
    stub = stub_of(server, victim["pack"])
    killed_at = time.monotonic()
    os.kill(stub.pid, signal.SIGKILL)

    failures, seen_failure = 0, None
    recovered_at = None
    deadline = killed_at + 90
    while time.monotonic() < deadline:
        try:
            infer(victim_endpoint["grpc_url"], victim["pack"], victim_name, vx, timeout_s=10)
            if seen_failure or time.monotonic() - killed_at > 3:
                recovered_at = time.monotonic()
                break
        except InferenceServerException as error:
            failures += 1
            seen_failure = seen_failure or str(error)
        time.sleep(0.2)
    stop.set()
    traffic.join(timeout=30)

    assert recovered_at is not None, f"the pack never served again; last error: {seen_failure}"
    assert seen_failure is not None, "a killed stub must have been noticed (requests failed until the reload)"
    new_stub = stub_of(server, victim["pack"])
    assert new_stub.pid != stub.pid
    actions = [row[0] for row in sql(stack, "SELECT action FROM audit_log WHERE subject = :pack AND id > 0 "
                                      "ORDER BY id", pack=victim["pack"])]
    assert "pack.unhealthy" in actions, actions
    bystander_errors = [e for _, e in outcomes if e is not None]
    assert len(outcomes) > 20 and bystander_errors == [], bystander_errors[:3]
    print(f"\nstub death: pack {victim['pack']} served again {recovered_at - killed_at:.1f} s after SIGKILL; "
          f"{failures} victim probes failed meanwhile; bystander pack answered {len(outcomes)} requests, 0 failed")
