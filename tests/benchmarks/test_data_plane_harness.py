"""The data-plane benchmark harness measures what it claims: a tiny run on the real tritonserver writes a
complete, self-consistent JSON (numbers positive, contenders alternated, no request failed). Timing values
themselves are not judged here."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from benchmarks.data_plane import FULL, JSON_NAME, QUICK, build_parser, config_from_args, run, zipf_order

TINY = replace(QUICK, mode="tiny", memory_models=6, dedicated_cap=2, memory_repeats=1, servable_models=6,
               servable_repeats=1, cold_members=3, latency_block=2, zipf_models=6, zipf_seconds=1.0,
               zipf_warmup_seconds=0.2, zipf_pairs=1, concurrency=4)


def test_cli_flags_pick_the_mode():
    assert config_from_args(build_parser().parse_args([])) == FULL
    args = build_parser().parse_args(["--quick", "--out", "x", "--seed", "3"])
    assert config_from_args(args) == replace(QUICK, seed=3) and str(args.out) == "x"
    assert QUICK.cold_members >= 200 and FULL.cold_members >= 200 and FULL.zipf_models == 1000


def test_zipf_order_is_seeded_skewed_and_in_range():
    order = zipf_order(100, 1.1, 20_000, rank_seed=0, draw_seed=1)
    assert np.array_equal(order, zipf_order(100, 1.1, 20_000, rank_seed=0, draw_seed=1))
    assert order.min() >= 0 and order.max() < 100
    counts = np.bincount(order, minlength=100)
    assert counts.max() > 10 * np.median(counts), "a Zipf(1.1) mix has a few very hot members"


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_a_tiny_run_writes_consistent_results(tmp_path):
    docs = tmp_path / "report.md"
    results = run(TINY, tmp_path / "out", docs=docs, progress=False)
    on_disk = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    assert on_disk["config"]["mode"] == "tiny" and on_disk["table"] == results["table"]
    for section in ("memory", "servable", "latency", "zipf", "environment"):
        assert section in on_disk

    memory = on_disk["memory"]
    assert [r["layout"] for r in memory["runs"]] == ["packs", "dedicated"], "layouts alternate"
    packs, dedicated = memory["runs"]
    assert packs["models"] == 6 and packs["triton_models"] == 3  # one pack per architecture
    assert dedicated["models"] == 2 and dedicated["stopped"] == "cap" and dedicated["of"] == 6
    for run_ in memory["runs"]:
        assert run_["loaded"]["pss"] > run_["empty"]["pss"] > 0
        assert run_["loaded"]["processes"] > run_["empty"]["processes"] >= 1, "stubs are counted"
        assert _positive(run_["pss_mb_per_model"]) and _positive(run_["load_s"])
    summary = memory["summary"]
    assert summary["packs"]["models_per_gib"] == pytest.approx(1024 / summary["packs"]["pss_mb_per_model"])
    assert summary["ratio_models_per_gib"] == pytest.approx(
        summary["packs"]["models_per_gib"] / summary["dedicated"]["models_per_gib"])

    servable = on_disk["servable"]
    assert servable["models"] == 6 and len(servable["runs"]) == 1
    for run_ in servable["runs"]:
        assert 0 < run_["ready_s"] <= run_["packs_loaded_s"] <= run_["all_answered_s"]
        assert run_["answers"] == 6
    assert _positive(servable["summary"]["dedicated_extrapolated_load_s"])

    latency = on_disk["latency"]
    assert latency["members"] == 3
    for kind in ("cold", "second", "warm"):
        assert latency[kind]["count"] == 3
        assert 0 < latency[kind]["p50_ms"] <= latency[kind]["p99_ms"] <= latency[kind]["max_ms"]
    assert latency["member_loads_observed"] == latency["member_loads_expected"] == 3 + 3

    zipf = on_disk["zipf"]
    assert [r["config"] for r in zipf["runs"]] == ["batching", "no_batching"], "A/B alternate"
    for run_ in zipf["runs"]:
        assert run_["errors"] == 0 and run_["completed"] > 0 and _positive(run_["rps"])
        assert run_["rps"] == pytest.approx(run_["completed"] / run_["seconds"])
        assert 0 < run_["p50_ms"] <= run_["p99_ms"]
        # the server counted at least what the client saw succeed (plus nothing failed)
        assert run_["server"]["requests"] >= run_["completed"]
        assert run_["server"]["avg_batch"] >= 1 and _positive(run_["server"]["torch_forward_us"])
    assert zipf["runs"][1]["server"]["avg_batch"] == 1, "without dynamic batching every batch is one request"
    assert zipf["tritonserver_version"].startswith("2.")
    assert zipf["summary"]["ratio_rps"] == pytest.approx(
        zipf["summary"]["batching"]["rps"] / zipf["summary"]["no_batching"]["rps"])

    report = docs.read_text()
    assert "| measurement | packs | baseline | ratio |" in report and "TINY mode" in report
    assert results["table"] in report
