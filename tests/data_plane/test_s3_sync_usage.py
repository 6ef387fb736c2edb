"""The disk tier's LRU learns which packs are used from real requests, not from the control plane's probes.

Triton 2.51 counts a Python-backend error response as `nv_inference_request_success`, so the stub probe
(an inference for a member no pack holds, answered NOT_FOUND by the pack runtime) made every loaded pack
look used. The sync's UsageTracker reads the pack runtime's per-member request counter instead.
"""
from __future__ import annotations

import pytest

from fleet.client import infer_at
from fleet.triton_server import TritonServer
from fleet.waiting import wait_for
from model_repository.generator import example_inputs
from model_repository.manifest import Manifest
from model_repository.packing import build_repository
from model_repository.s3_sync import UsageTracker
from model_repository.triton_admin import ProbeResult

PAGE = """# TYPE nv_inference_request_success counter
nv_inference_request_success{model="mlp-pack-0000",version="1"} 40
nv_inference_request_success{model="adfilter",version="1"} 7
# TYPE fleet_member_requests_total counter
fleet_member_requests_total{member="m-1",pack="mlp-pack-0000"} 10
fleet_member_requests_total{member="m-2",pack="mlp-pack-0000"} 5
# TYPE fleet_pack_budget_bytes gauge
fleet_pack_budget_bytes{pack="mlp-pack-0000"} 1000
fleet_pack_budget_bytes{pack="cnn-pack-0000"} 1000
nv_inference_request_success{model="cnn-pack-0000",version="1"} 12
"""


def test_packs_count_member_requests_and_other_models_count_triton_successes():
    assert UsageTracker.request_counts(PAGE) == {"mlp-pack-0000": 15.0, "adfilter": 7.0,
                                                 "cnn-pack-0000": 0.0}  # probed only: never called


def probe(server: TritonServer, pack: str) -> ProbeResult:
    """The control plane's stub probe (control_plane/reconcile/stub_probe.py), with the pack's first input."""
    spec = server.admin.metadata(pack)["inputs"][0]
    return server.admin.probe(pack, [{"name": spec["name"], "dtype": spec["datatype"], "shape": spec["shape"]}])


@pytest.mark.slow
def test_a_probed_pack_is_not_used_and_a_called_one_is(generated_models, tmp_path):
    entry = next(m for m in Manifest.read(generated_models).models if m.architecture == "mlp")
    plans = build_repository(generated_models, tmp_path / "repo", pack_size=10)
    pack = next(plan.name for plan in plans if entry.id in {m.id for m in plan.members})
    with TritonServer(tmp_path / "repo") as server:
        server.load(pack)
        tracker = UsageTracker(server.metrics_url)
        tracker.poll()
        for _ in range(3):
            assert probe(server, pack).answered, "the stub refused the probe member itself"
        assert pack not in tracker.poll(), "probes are not use"
        (x,) = example_inputs(entry, batch=1)

        def called_and_counted() -> bool:  # the runtime flushes its counters at most once a second
            infer_at(server.grpc_url, pack, {entry.inputs[0].name: x}, entry.id,
                     datatypes={entry.inputs[0].name: entry.inputs[0].dtype})
            return pack in tracker.poll()

        wait_for(called_and_counted, timeout_s=30, interval_s=0.3, what="a called pack counted as used")
