"""Request rates per pack and recently called members, from two scrapes of Triton's metrics text."""
from __future__ import annotations

from control_plane.traffic import TrafficMeter, parse


def metrics(pack_a: float, member_x: float, member_y: float = 0.0) -> str:
    return f"""# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{{model="pack-a",version="1"}} {pack_a}
nv_inference_request_success{{model="pack-b",version="1"}} 7
# HELP fleet_member_requests_total Inference requests per pack member
# TYPE fleet_member_requests_total counter
fleet_member_requests_total{{member="x",pack="pack-a"}} {member_x}
fleet_member_requests_total{{member="y",pack="pack-a"}} {member_y}
"""


def test_parse_reads_pack_and_member_counters():
    scrape = parse(metrics(120, 100, 20), at=5.0)
    assert scrape.packs == {"pack-a": 120.0, "pack-b": 7.0}
    assert scrape.members == {("pack-a", "x"): 100.0, ("pack-a", "y"): 20.0}


def test_rates_are_counter_differences_summed_over_servers():
    meter = TrafficMeter(hot_window_s=60)
    meter.observe("s1", parse(metrics(100, 100), at=0.0))
    assert meter.rates() == {}, "one scrape is no rate yet"
    meter.observe("s1", parse(metrics(300, 250), at=10.0))
    meter.observe("s2", parse(metrics(0, 0), at=0.0))
    meter.observe("s2", parse(metrics(100, 0), at=10.0))
    assert meter.rates() == {"pack-a": 30.0, "pack-b": 0.0}  # 200/10 + 100/10
    meter.forget("s2")
    assert meter.rates()["pack-a"] == 20.0


def test_a_restarted_server_resets_without_a_negative_rate():
    meter = TrafficMeter()
    meter.observe("s1", parse(metrics(500, 100), at=0.0))
    meter.observe("s1", parse(metrics(10, 5), at=5.0))
    assert meter.rates()["pack-a"] == 0.0


def test_hot_members_are_those_called_within_the_window():
    meter = TrafficMeter(hot_window_s=30)
    meter.observe("s1", parse(metrics(0, 0, 0), at=0.0))
    meter.observe("s1", parse(metrics(10, 10, 0), at=10.0))  # only x was called
    assert meter.hot_members(now=20.0) == {"pack-a": {"x"}}
    meter.observe("s1", parse(metrics(20, 10, 3), at=20.0))  # then only y
    assert meter.hot_members(now=25.0) == {"pack-a": {"x", "y"}}
    assert meter.hot_members(now=45.0) == {"pack-a": {"y"}}, "x was last called at 10 s: out of the window"
