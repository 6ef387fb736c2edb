"""The pack runtime's device tier (triton/backends/pack/model.py `DeviceTier`), with movers injected.

No GPU and no NeuronCore here: the tier logic (LRU within a byte budget, members in use never demoted,
evicted members kept in host RAM, counters) is tested with a recording mover; the two real movers run on
what this machine has (the GPU mover with the CPU as its device, the Neuron mover with a plain TorchScript
artifact). The runtime is imported with a stand-in `triton_python_backend_utils`, which only the server
provides; the real server runs the tier in tests/data_plane/test_pack_runtime.py.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import sys
import threading
import types
from pathlib import Path

import pytest
import torch

from fleet.waiting import wait_for

RUNTIME = Path(__file__).resolve().parents[2] / "triton" / "backends" / "pack" / "model.py"


class StandInMetric:
    def __init__(self, family: str, labels: dict[str, str]) -> None:
        self.family, self.labels, self.value = family, labels, 0.0

    def increment(self, value: float) -> None:
        self.value += value

    def set(self, value: float) -> None:
        self.value = value


class StandInMetricFamily:
    """pb_utils.MetricFamily as far as the runtime uses it; every metric made is kept in `made`."""

    COUNTER, GAUGE = "counter", "gauge"
    made: list[StandInMetric] = []

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name = name

    def Metric(self, labels: dict[str, str]) -> StandInMetric:  # noqa: N802  pb_utils' spelling
        metric = StandInMetric(self.name, labels)
        StandInMetricFamily.made.append(metric)
        return metric


def metric(family: str, **labels: str) -> float | None:
    found = [m.value for m in StandInMetricFamily.made if m.family == family and labels.items() <= m.labels.items()]
    return found[-1] if found else None


def _runtime():
    """model.py as a module, with a stand-in pb_utils: the tier code never calls it, and a pack instance
    started in-process only makes metrics."""
    saved_path, saved_utils = list(sys.path), sys.modules.get("triton_python_backend_utils")
    stand_in = types.ModuleType("triton_python_backend_utils")
    stand_in.MetricFamily = StandInMetricFamily
    sys.modules["triton_python_backend_utils"] = stand_in
    try:
        spec = importlib.util.spec_from_file_location("_pack_runtime_under_test", RUNTIME)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path[:] = saved_path  # model.py drops the working directory from sys.path for the stub
        if saved_utils is None:
            sys.modules.pop("triton_python_backend_utils", None)
        else:
            sys.modules["triton_python_backend_utils"] = saved_utils


runtime = _runtime()


class RecordingMover:
    """A device that records every move; a member's payload is its size in bytes."""

    tier = "gpu"

    def __init__(self, charge_factor: float = 1.0) -> None:
        self.moves: list[tuple[str, object]] = []
        self.charge_factor = charge_factor

    def estimate(self, payload: int) -> int:
        return payload

    def promote(self, payload: int):
        self.moves.append(("promote", payload))
        return {"on_device": payload}, int(payload * self.charge_factor)

    def demote(self, module) -> None:
        self.moves.append(("demote", module["on_device"]))

    def release(self, module) -> None:
        self.moves.append(("release", module["on_device"]))


def test_least_recently_used_members_leave_the_device_when_a_promotion_needs_room():
    mover = RecordingMover()
    tier = runtime.DeviceTier(mover, budget_bytes=250)
    for ident, size in (("a", 100), ("b", 101), ("a", 100)):
        tier.promote(ident, size)  # a second promotion of a member on the device is a hit, no move
    assert tier.acquire("a") == {"on_device": 100}
    tier.release("a")
    tier.promote("c", 102)  # b is the least recently used: it goes
    assert [m for m in mover.moves if m[0] == "demote"] == [("demote", 101)]
    assert tier.contains("a") and tier.contains("c") and not tier.contains("b")
    assert tier.resident_bytes == 202 <= tier.budget_bytes
    counters, resident_bytes, members = tier.take_counters()
    assert (counters.loads, counters.evictions, counters.hits, resident_bytes, members) == (3, 1, 1, 202, 2)


def test_a_member_in_use_is_not_demoted_under_its_forward_pass():
    mover = RecordingMover()
    tier = runtime.DeviceTier(mover, budget_bytes=200)
    tier.promote("a", 100)
    tier.promote("b", 100)
    assert tier.acquire("a") is not None  # `a` is the LRU one, but a forward pass is running it
    tier.promote("c", 100)
    assert tier.contains("a") and not tier.contains("b")
    tier.release("a")


def test_a_promotion_waits_for_a_member_in_use_and_gives_up_after_its_wait():
    tier = runtime.DeviceTier(RecordingMover(), budget_bytes=100, wait_s=30)
    demoted_in_use: list[bool] = []
    original = tier.mover.demote
    tier.mover.demote = lambda module: (demoted_in_use.append("a" in tier.in_use), original(module))
    tier.promote("a", 100)
    tier.acquire("a")
    done = threading.Event()
    thread = threading.Thread(target=lambda: (tier.promote("b", 100), done.set()), daemon=True)
    thread.start()
    tier.release("a")  # whenever the promotion got to its eviction, it could only demote `a` after this
    assert done.wait(30)
    assert demoted_in_use == [False]
    assert tier.contains("b") and not tier.contains("a")

    impatient = runtime.DeviceTier(RecordingMover(), budget_bytes=100, wait_s=0.1)
    impatient.promote("a", 100)
    impatient.acquire("a")
    with pytest.raises(TimeoutError, match="full of members in use"):
        impatient.promote("b", 100)


def test_a_member_larger_than_the_device_budget_is_refused_without_evicting_anyone():
    mover = RecordingMover()
    tier = runtime.DeviceTier(mover, budget_bytes=100)
    tier.promote("a", 60)
    with pytest.raises(ValueError, match="needs 101 bytes on the gpu, budget 100"):
        tier.promote("big", 101)
    assert tier.contains("a") and mover.moves == [("promote", 60)]
    measured = runtime.DeviceTier(RecordingMover(charge_factor=2.0), budget_bytes=100)
    with pytest.raises(ValueError, match="measured"):
        measured.promote("grows", 60)  # estimated 60, measured 120 on the device: moved back, refused
    assert measured.resident_bytes == 0 and not measured.contains("grows")


def test_a_charge_above_the_estimate_evicts_more_after_the_promotion():
    mover = RecordingMover(charge_factor=1.5)
    tier = runtime.DeviceTier(mover, budget_bytes=200)
    tier.promote("a", 60)  # charged 90
    tier.promote("b", 60)  # estimated 60 (fits: 150), charged 90 -> 180
    tier.promote("c", 60)  # estimated 60 -> evicts a; charged 90 -> 180
    assert tier.resident_bytes <= 200 and not tier.contains("a")
    tier.promote("a", 60)  # known charge 90 now: evicts b before the promotion
    assert tier.resident_bytes <= 200 and [m[1] for m in mover.moves if m[0] == "demote"] == [60, 60]


def test_a_member_leaving_host_ram_leaves_the_device_without_a_copy_back():
    mover = RecordingMover()
    tier = runtime.DeviceTier(mover, budget_bytes=200)
    tier.promote("a", 100)
    assert tier.drop("a") and not tier.drop("a")
    assert ("demote", 100) not in mover.moves and ("release", 100) in mover.moves
    assert tier.resident_bytes == 0
    assert tier.acquire("a") is None
    counters, _, _ = tier.take_counters()
    assert (counters.evictions, counters.misses) == (1, 1)


def test_the_gpu_mover_moves_the_module_in_place_and_charges_its_tensor_bytes():
    module = torch.nn.Linear(16, 8).eval()
    mover = runtime.GpuMover(torch, "cpu")  # CPU stands in for the GPU here
    on_device, charged = mover.promote(module)
    assert on_device is module and charged == (16 * 8 + 8) * 4 == mover.estimate(module)
    tier = runtime.DeviceTier(mover, budget_bytes=charged)
    assert tier.promote("linear", module) is module
    x = torch.ones(2, 16)
    with torch.inference_mode():
        assert torch.equal(tier.acquire("linear")(x), module(x))


def test_the_neuron_mover_keeps_bytes_in_host_ram_and_loads_the_module_from_them_again():
    traced = torch.jit.trace(torch.nn.Linear(4, 2).eval(), torch.ones(1, 4))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    artifact = buffer.getvalue()  # a plain TorchScript artifact stands in for a torch_neuronx.trace one
    mover = runtime.NeuronMover(torch)
    tier = runtime.DeviceTier(mover, budget_bytes=len(artifact) * 3 // 2)
    first = tier.promote("m", artifact)
    other = tier.promote("n", artifact)  # m leaves the core; its bytes stay with the caller (host RAM)
    assert tier.resident_bytes == len(artifact) and not tier.contains("m")
    again = tier.promote("m", artifact)
    assert again is not first and other is not again
    x = torch.ones(3, 4)
    with torch.inference_mode():
        assert torch.equal(again(x), traced(x))


def test_members_released_by_other_threads_let_a_waiting_promotion_through():
    tier = runtime.DeviceTier(RecordingMover(), budget_bytes=300, wait_s=30)
    for ident in "abc":
        tier.promote(ident, 100)
        tier.acquire(ident)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(tier.promote("d", 100)), daemon=True)
    thread.start()
    tier.release("b")
    wait_for(lambda: result, timeout_s=30, what="the promotion of d")
    assert not tier.contains("b") and tier.contains("a") and tier.contains("c")


def test_an_inf2_member_evicted_from_its_core_comes_back_from_the_bytes_in_host_ram(tmp_path, monkeypatch):
    """A pack instance of the inf2 family, started in-process: host RAM keeps each compiled artifact's bytes
    and the NeuronCore tier loads modules from them. No NeuronCore here: `torch_neuronx` is a stand-in (an
    empty module; the runtime imports it only to register Neuron ops) and the artifacts are plain
    TorchScript, so `torch.jit.load` of the bytes runs on the CPU."""
    monkeypatch.setitem(sys.modules, "torch_neuronx", types.ModuleType("torch_neuronx"))
    monkeypatch.setenv("NEURON_RT_VISIBLE_CORES", "unset")
    version = tmp_path / "neuron-pack" / "1"
    (version / "members").mkdir(parents=True)
    members, eager = {}, {}
    for k, ident in enumerate("abc"):
        torch.manual_seed(k)
        eager[ident] = torch.jit.trace(torch.nn.Linear(4, 64).eval(), torch.ones(2, 4))
        path = version / "members" / f"{ident}.neuron.pt"
        torch.jit.save(eager[ident], str(path))
        data = path.read_bytes()
        members[ident] = {"file": f"members/{ident}.pt", "sha256": "", "format": "torchscript",
                          "artifacts": {"inf2": {"path": f"members/{ident}.neuron.pt", "bytes": len(data),
                                                 "sha256": hashlib.sha256(data).hexdigest(), "static_batch": 2}},
                          "inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, 4]}],
                          "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, 64]}]}
    (version / "members.json").write_text(json.dumps({"generation": 1, "members": members}))
    artifact_bytes = members["a"]["artifacts"]["inf2"]["bytes"]
    budget = artifact_bytes * 5 // 2  # the core holds two of the three
    pack = runtime.TritonPythonModel()
    pack.initialize({"model_config": json.dumps({"parameters": {
        "family": {"string_value": "inf2"}, "max_device_bytes": {"string_value": str(budget)},
        "neuron_core_offset": {"string_value": "2"}}}), "model_name": "neuron-pack",
        "model_repository": str(version.parent), "model_version": "1", "model_instance_name": "neuron-pack_1"})
    try:
        assert os.environ["NEURON_RT_VISIBLE_CORES"] == "3"  # offset 2, instance 1: one core per instance
        assert pack.tier.name == "neuron" and pack.tier.budget_bytes == budget
        for ident in "abc":
            pack._make_ready(ident)
        assert isinstance(pack.resident["a"].module, bytes)  # host RAM holds the artifact, not a module
        assert not pack.tier.contains("a") and pack.tier.resident_bytes <= budget
        (version / "members" / "a.neuron.pt").unlink()  # from now on, a disk read of `a` would fail
        module = pack._make_ready("a")
        x = torch.arange(12, dtype=torch.float32).reshape(3, 4)  # 3 rows: padded to 2 x the static batch 2
        (out,) = pack._forward(module, [x.numpy()], pack.members["a"].static_batch)
        with torch.inference_mode():
            assert np_equal(out, eager["a"](x).numpy())
        pack._flush_metrics(force=True)
        assert metric("fleet_member_loads_total", pack="neuron-pack", member="a") == 1
        assert metric("fleet_tier_loads_total", pack="neuron-pack", tier="neuron") == 4
        assert metric("fleet_tier_evictions_total", pack="neuron-pack", tier="neuron") == 2
        assert metric("fleet_tier_resident_members", pack="neuron-pack", tier="neuron") == 2
        assert metric("fleet_tier_resident_members", pack="neuron-pack", tier="host") == 3
        assert metric("fleet_tier_budget_bytes", pack="neuron-pack", tier="neuron") == budget
    finally:
        pack.finalize()


def np_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_an_instance_being_unloaded_leaves_the_gauges_its_successor_shares(tmp_path, monkeypatch):
    """Triton shares a custom metric between every instance that makes one of the same family and labels,
    so on a reload the old instance and its successor write the same gauges. The old instance's last flush
    (in finalize, which may run after the new instance has served) adds its counters but must not set the
    gauges back to its own state. Found as a flaky full-suite run: a real tritonserver showed a device tier
    with 3 loads and 0 resident members after a reload."""
    shared: dict[tuple, StandInMetric] = {}

    def shared_metric(family: StandInMetricFamily, labels: dict[str, str]) -> StandInMetric:
        key = (family.name, tuple(sorted(labels.items())))
        if key not in shared:
            shared[key] = StandInMetric(family.name, labels)
            StandInMetricFamily.made.append(shared[key])
        return shared[key]

    monkeypatch.setattr(StandInMetricFamily, "Metric", shared_metric)
    version = tmp_path / "reloaded" / "1"
    (version / "members").mkdir(parents=True)
    members = {}
    for k, ident in enumerate("ab"):
        torch.manual_seed(k)
        torch.jit.save(torch.jit.trace(torch.nn.Linear(4, 2).eval(), torch.ones(1, 4)),
                       str(version / "members" / f"{ident}.pt"))
        members[ident] = {"file": f"members/{ident}.pt", "sha256": "", "format": "torchscript",
                          "inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, 4]}],
                          "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, 2]}]}
    (version / "members.json").write_text(json.dumps({"generation": 1, "members": members}))
    args = {"model_config": json.dumps({"parameters": {}}), "model_name": "reloaded",
            "model_repository": str(version.parent), "model_version": "1", "model_instance_name": "reloaded_0"}
    old = runtime.TritonPythonModel()
    old.initialize(args)
    new = None
    try:
        for ident in "ab":
            old._make_ready(ident)
        old._flush_metrics(force=True)
        assert metric("fleet_tier_resident_members", pack="reloaded", tier="host") == 2
        new = runtime.TritonPythonModel()  # the reload: the new instance serves before the old one is gone
        new.initialize(args)
        new._make_ready("a")
        new._flush_metrics(force=True)
        assert metric("fleet_tier_resident_members", pack="reloaded", tier="host") == 1
        old.finalize()
        old = None
        assert metric("fleet_tier_resident_members", pack="reloaded", tier="host") == 1, \
            "the unloaded instance set the shared gauge back to its own state"
        assert metric("fleet_pack_resident_members", pack="reloaded") == 1
        assert metric("fleet_tier_loads_total", pack="reloaded", tier="host") == 3, "counters add up over both"
    finally:
        for instance in (old, new):
            if instance is not None:
                instance.finalize()
