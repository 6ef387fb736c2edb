"""Device tier budgets from a server's budgets to each pack's config, and tier usage from a metrics page."""
from __future__ import annotations

import pytest

from control_plane.capacity import NEURON_CORE_BUDGET_BYTES, NEURON_CORE_V2_BYTES, device_bytes
from control_plane.placement import device_budget
from control_plane.traffic import TrafficMeter, parse
from model_repository.triton_config import PackSettings, pack_config, parse_config

GiB = 2**30


def test_a_gpu_server_splits_its_gpu_budget_over_its_packs_by_what_each_reserved():
    gpu = device_bytes("gpu", 14 * GiB, "g4dn.xlarge")
    shares = [device_budget(gpu, reserved, 4 * GiB) for reserved in (1 * GiB, 3 * GiB)]
    assert shares == [int(3.5 * GiB), int(10.5 * GiB)] and sum(shares) <= gpu


def test_inf2_packs_get_a_share_of_one_neuroncore_per_instance_and_cpu_packs_no_device_tier():
    # 32 GiB of HBM per Inferentia2 chip, two NeuronCore-v2 per chip; ~1 GiB left to the Neuron runtime.
    assert NEURON_CORE_V2_BYTES == 16 * GiB and NEURON_CORE_BUDGET_BYTES == 15 * GiB
    assert device_bytes("inf2", None, "inf2.xlarge") == device_bytes("inf2", None, None) == 15 * GiB
    assert device_budget(device_bytes("inf2", None, "inf2.8xlarge"), 2 * GiB, 2 * GiB) == 15 * GiB
    assert device_bytes("cpu", 14 * GiB, None) is None
    assert device_budget(None, GiB, GiB) is None and device_budget(device_bytes("gpu", None, None), GiB, GiB) is None
    assert device_budget(8 * GiB, 0, GiB) is None, "nothing reserved: no share to give"


@pytest.mark.parametrize(("family", "expected"), [("gpu", str(3 * GiB)), ("inf2", str(3 * GiB)), ("cpu", None)])
def test_gpu_and_inf2_pack_configs_carry_the_device_budget(family, expected):
    text = pack_config("p", [("INPUT__0", "FP32", [-1])], [("OUTPUT__0", "FP32", [-1])], family,
                       PackSettings(max_device_bytes=3 * GiB))
    parameters = parse_config(text).parameters
    assert (parameters["max_device_bytes"].string_value if "max_device_bytes" in parameters else None) == expected


PAGE = """# HELP fleet_tier_resident_bytes Bytes charged for the members in a tier
# TYPE fleet_tier_resident_bytes gauge
fleet_tier_resident_bytes{pack="a",tier="host"} 3000
fleet_tier_resident_bytes{pack="b",tier="host"} 1000
fleet_tier_resident_bytes{pack="a",tier="gpu"} 2000
# HELP fleet_tier_resident_members Members resident in a tier
# TYPE fleet_tier_resident_members gauge
fleet_tier_resident_members{pack="a",tier="host"} 3
fleet_tier_resident_members{pack="b",tier="host"} 1
fleet_tier_resident_members{pack="a",tier="gpu"} 2
# HELP fleet_tier_budget_bytes Byte budget of a tier in a pack instance
# TYPE fleet_tier_budget_bytes gauge
fleet_tier_budget_bytes{pack="a",tier="host"} 8000
fleet_tier_budget_bytes{pack="b",tier="host"} 8000
fleet_tier_budget_bytes{pack="a",tier="gpu"} 4000
# HELP fleet_tier_misses_total Requests whose member was not resident in the tier
# TYPE fleet_tier_misses_total counter
fleet_tier_misses_total{pack="a",tier="gpu"} 7
fleet_tier_misses_total{pack="a",tier="host"} 3
# HELP fleet_tier_load_seconds_total Seconds spent loading (promoting) members into the tier
# TYPE fleet_tier_load_seconds_total counter
fleet_tier_load_seconds_total{pack="a",tier="gpu"} 0.25
"""


def test_a_servers_tier_usage_is_the_sum_over_its_packs():
    tiers = parse(PAGE).tiers
    host = tiers["host"]
    assert (host.resident_bytes, host.resident_members, host.budget_bytes) == (4000, 4, 16000)
    assert (tiers["gpu"].resident_bytes, tiers["gpu"].misses, tiers["gpu"].load_seconds) == (2000, 7, 0.25)
    meter = TrafficMeter()
    meter.observe("s1", parse(PAGE, at=1.0))
    document = meter.take_tier_usage()["s1"]
    assert document["tiers"]["gpu"] == {"resident_bytes": 2000, "resident_members": 2, "budget_bytes": 4000,
                                        "hits": 0, "misses": 7, "evictions": 0, "loads": 0, "load_seconds": 0.25}
    assert meter.take_tier_usage() == {}, "handed over once per scrape"
    assert parse("nv_inference_request_success{model=\"a\"} 1\n").tiers == {}, "a server without packs: no tiers"
