"""The memory soak measures what it claims on the real tritonserver: members really churn through the LRU,
packs really reload, samples cover the run, and the report is written from the numbers. Whether memory
stays bounded over 1,000 cycles is the benchmark's finding (docs/benchmarks-memory.md), not a test."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from benchmarks.memory_soak import JSON_NAME, QUICK, growth, run


def test_growth_compares_the_first_and_last_tenth_of_the_samples():
    points = [{"cycle": c, "mb": 100.0 + (10.0 if c > 90 else 0.0)} for c in range(1, 101)]
    result = growth(points, "mb")
    assert result["first_mb"] == 100.0 and result["last_mb"] == 110.0 and result["growth_mb"] == 10.0
    assert result["kb_per_cycle"] == pytest.approx(10 * 1024 / 90) and result["peak_mb"] == 110.0


@pytest.mark.slow
def test_a_tiny_soak_churns_members_and_packs_and_writes_its_report(tmp_path):
    config = replace(QUICK, mode="tiny", models=6, member_cycles=8, pack_cycles=3, samples=4)
    docs = tmp_path / "docs" / "memory.md"
    results = run(config, tmp_path / "out", docs, progress=False)
    on_disk = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    assert on_disk["packs"] == 3 and on_disk["table"] == results["table"]

    member = on_disk["member_churn"]
    assert member["requests"] == 8 * 3
    # the text members are larger than the LRU budget: each of their requests loads and evicts
    assert member["member_loads"] >= 8 and member["member_evictions"] >= 8 - 1
    assert member["points"][0]["cycle"] == 1 and member["points"][-1]["cycle"] == 8
    assert all(p["tree_pss_mb"] > p["server_pss_mb"] > 0 and p["processes"] == 4 for p in member["points"])

    pack = on_disk["pack_churn"]
    assert pack["cycles"] == 3 and 0 < pack["reload_s_p50"] <= pack["reload_s_p99"]
    assert [p["cycle"] for p in pack["points"]] == [1, 2, 3]
    assert "| member churn (8 cycles" in docs.read_text()
    assert (tmp_path / "docs" / "img" / "memory-soak.png").stat().st_size > 1000
