"""The data-plane contract (model_repository/contract.py) and the pack runtime's own copy of it.

The runtime is copied into every pack and may import only torch, numpy and pb_utils, so it cannot import
the contract: these tests load it (with a stand-in pb_utils) and check each of its copies against the
contract's value, so the two cannot drift apart unnoticed. The real server's answers carry the same
codes: tests/data_plane/test_pack_runtime.py and tests/reliability/test_stub_probe.py.
"""
from __future__ import annotations

import json
import types

import pytest

from model_repository import contract
from model_repository.contract import ErrorCode, error_code, parse_metrics, tagged

from .test_pack_tiers import StandInMetricFamily, runtime


def test_the_runtime_names_members_and_the_probe_as_the_contract_does():
    assert runtime.MODEL_ID_PARAMETER == contract.MODEL_ID_PARAMETER
    assert runtime.PROBE_MEMBER == contract.PROBE_MEMBER


def test_every_reason_the_runtime_can_give_is_a_contract_error_code():
    assert set(runtime.ERROR_REASONS) == {code.value for code in ErrorCode}
    assert set(runtime.DEFAULT_REASONS.values()) <= set(runtime.ERROR_REASONS)


@pytest.mark.parametrize("triton_code", ["NOT_FOUND", "INVALID_ARGUMENT", "UNAVAILABLE", "INTERNAL"])
def test_the_runtime_tags_each_error_so_that_the_contract_reads_its_code(triton_code):
    made = []

    class TritonError:
        NOT_FOUND, INVALID_ARG, UNAVAILABLE, INTERNAL = "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "INTERNAL"

        def __init__(self, message, code=None):
            made.append((message, code))

    stand_in = types.SimpleNamespace(TritonError=TritonError, InferenceResponse=lambda output_tensors, error: error)
    saved, runtime.pb_utils = runtime.pb_utils, stand_in
    try:
        runtime.TritonPythonModel._error(runtime.RequestError("model 'x' is not in pack 'p'", triton_code))
    finally:
        runtime.pb_utils = saved
    message, _ = made[0]
    assert message.endswith("model 'x' is not in pack 'p'")
    assert error_code(message) == ErrorCode(runtime.DEFAULT_REASONS[triton_code])


def test_an_explicit_reason_wins_over_the_status_codes_default():
    error = runtime.RequestError("model 'big' needs 900 MB", "UNAVAILABLE", "over_budget")
    assert error.reason == ErrorCode.OVER_BUDGET


def test_the_runtime_exports_the_metric_names_the_contract_reads():
    names = {family.name for family in _families()}
    assert contract.MEMBER_REQUESTS in names
    assert {f"{contract.TIER_METRIC_PREFIX}{kind}" for kind in contract.TIER_GAUGES} <= names
    assert {f"{contract.TIER_METRIC_PREFIX}{kind}_total" for kind in contract.TIER_COUNTERS} <= names
    assert any(name.startswith(contract.PACK_METRIC_PREFIX) for name in names)


def _families() -> list:
    """Every metric family the runtime makes, from a pack instance's metric set-up with a stand-in pb_utils."""
    made: list = []

    class Recording(StandInMetricFamily):
        def __init__(self, name, description, kind):
            super().__init__(name, description, kind)
            made.append(self)

    instance = runtime.TritonPythonModel.__new__(runtime.TritonPythonModel)
    instance.pack, instance.max_resident_bytes, instance.tier = "p", 1, None
    saved = runtime.pb_utils.MetricFamily
    runtime.pb_utils.MetricFamily = Recording
    try:
        instance._init_metrics()
    finally:
        runtime.pb_utils.MetricFamily = saved
    return made


@pytest.mark.parametrize("message", [
    tagged(ErrorCode.UNKNOWN_MEMBER, "model '__fleet_probe__' is not in pack 'p'"),
    "[StatusCode.NOT_FOUND] " + tagged("unknown_member", "model 'm' is not in pack 'p'"),
    json.dumps({"error": tagged(ErrorCode.UNKNOWN_MEMBER, "model 'm' is not in pack 'p'")}),
])
def test_an_error_code_is_read_from_grpc_http_and_json_messages_alike(message):
    assert error_code(message) is ErrorCode.UNKNOWN_MEMBER


def test_messages_without_a_tag_have_no_code_except_an_older_runtimes_unknown_member():
    assert error_code("Stub process is not healthy") is None
    assert error_code("[fleet:from_the_future] something") is None
    assert error_code(None) is None
    assert error_code("model '__fleet_probe__' is not in pack 'p'; ask the control plane") is ErrorCode.UNKNOWN_MEMBER


METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="pack-0",version="1"} 120
nv_inference_request_success{model="pack-1",version="1"} 7
nv_inference_request_success{model="adfilter",version="1"} 33
# TYPE fleet_member_requests_total counter
fleet_member_requests_total{pack="pack-0",member="a"} 80
fleet_member_requests_total{pack="pack-0",member="b"} 20
fleet_pack_resident_members{pack="pack-0"} 2
fleet_pack_resident_members{pack="pack-1"} 0
fleet_tier_resident_bytes{pack="pack-0",tier="host"} 1000
fleet_tier_resident_bytes{pack="pack-1",tier="host"} 24
fleet_tier_hits_total{pack="pack-0",tier="host"} 5
fleet_tier_loads_total{pack="pack-0",tier="gpu"} 2
fleet_tier_load_seconds_total{pack="pack-0",tier="gpu"} 0.5
nv_gpu_utilization{gpu_uuid="GPU-1"} 0.5
"""


def test_one_parser_reads_what_the_sync_and_the_reconciler_need():
    metrics = parse_metrics(METRICS)
    assert metrics.model_successes == {"pack-0": 120, "pack-1": 7, "adfilter": 33}
    assert metrics.member_requests == {("pack-0", "a"): 80, ("pack-0", "b"): 20}
    assert metrics.packs == {"pack-0", "pack-1"}
    assert metrics.tiers["host"].resident_bytes == 1024 and metrics.tiers["host"].hits == 5
    assert metrics.tiers["gpu"].loads == 2 and metrics.tiers["gpu"].load_seconds == 0.5


def test_a_packs_use_counts_its_members_requests_not_tritons_successes_which_include_probes():
    # pack-1 answered 7 probes (Triton counts a Python-backend error as a success) but served no member
    assert parse_metrics(METRICS).requests_per_model() == {"pack-0": 100, "pack-1": 0, "adfilter": 33}


def test_label_values_with_escapes_and_samples_without_labels_are_read():
    found = list(contract.samples('up 1\nfleet_member_requests_total{pack="p\\"q",member="a\\\\b"} 3\n'))
    assert [(s.name, s.labels, s.value) for s in found] == [
        ("up", {}, 1.0), ("fleet_member_requests_total", {"pack": 'p"q', "member": "a\\b"}, 3.0)]
