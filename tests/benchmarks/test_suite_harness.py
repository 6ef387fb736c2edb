"""`fleet bench` measures what it claims: a tiny run of every section on the real servers writes a complete,
self-consistent JSON whose goal verdicts follow from its own numbers. Timing values are not judged here."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from benchmarks import report
from benchmarks.adfilter_bench import AdfilterConfig
from benchmarks.data_plane_config import JSON_NAME as DP_JSON_NAME
from benchmarks.data_plane_config import QUICK as DP_QUICK
from benchmarks.loadgen import LoadgenConfig
from benchmarks.peers import CONTENDERS, PeersConfig
from benchmarks.suite import JSON_NAME, PLOT_NAME, SuiteConfig, run

TINY = SuiteConfig(
    mode="tiny",
    data_plane=replace(DP_QUICK, mode="tiny", memory_models=6, dedicated_cap=2, memory_repeats=1, servable_models=6,
                       servable_repeats=1, cold_members=3, latency_block=3, zipf_models=6, zipf_seconds=0.5,
                       zipf_warmup_seconds=0.2, zipf_pairs=1, concurrency=4),
    peers=PeersConfig(models=9, pack_size=3, concurrency=4, seconds=0.6, warmup_seconds=0.2, rounds=2,
                      sweep_concurrency=(1, 4), sweep_seconds=0.4, torch_limit_seconds=0.3,
                      profile_requests=100),
    loadgen=LoadgenConfig(users=2, seconds=4, rounds=1),
    adfilter=AdfilterConfig(train_rows=3000, train_epochs=1, requests=300, concurrency=(2, 8), rounds=1),
)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_tiny_data_plane_run(on_disk: dict) -> None:
    """What a tiny run of benchmarks.data_plane must have written (its own JSON, and the suite's section):
    checked here rather than in a run of its own, so the section is measured once per test session."""
    assert on_disk["config"]["mode"] == "tiny"
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


@pytest.mark.slow
def test_a_tiny_suite_run_writes_consistent_results_and_computed_goals(tmp_path):
    docs = tmp_path / "docs" / "benchmarks.md"
    results = run(TINY, tmp_path / "out", docs=docs, progress=False)
    on_disk = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    assert on_disk["mode"] == "tiny" and on_disk["goals_table"] == results["goals_table"]
    for section in ("data_plane", "peers", "loadgen", "adfilter", "gpu", "environment", "goals"):
        assert section in on_disk, section

    peers = on_disk["peers"]
    assert peers["models"] == 9 and peers["packs"] == 3  # one pack per architecture
    names = [r["contender"] for r in peers["runs"]]
    assert sorted(names) == sorted(CONTENDERS * 2), "every contender runs once per round"
    assert names[:4] != names[4:] and set(names[:4]) == set(CONTENDERS), "order rotates between rounds"
    assert len(peers["sweep"]) == 2 * len(CONTENDERS)
    for r in peers["runs"] + peers["sweep"]:
        assert r["failures"] == 0 and r["completed"] > 0, r
        assert r["rps"] == pytest.approx(r["completed"] / r["seconds"])
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["cpu"]["server_cores"] > 0, "the server process tree did the work"
    for name, summary in peers["summary"].items():
        assert _positive(summary["rps"]) and summary["failures"] == 0
        if summary["concurrency_at_p99_budget"] is not None:
            best = max((r for r in peers["sweep"] if r["contender"] == name and r["p99_ms"] <= peers["p99_budget_ms"]),
                       key=lambda r: r["rps"])
            assert summary["rps_at_p99_budget"] == best["rps"]
    ratios = peers["ratios"]
    assert ratios["packs_grpc_over_fastapi_rps"] == pytest.approx(
        peers["summary"]["packs_grpc"]["rps"] / peers["summary"]["fastapi_http"]["rps"])
    assert ratios["packs_grpc_over_floor_rps"] == pytest.approx(
        peers["summary"]["packs_grpc"]["rps"] / peers["summary"]["floor_grpc"]["rps"])
    assert peers["fastapi"]["models"] == 9 and peers["fastapi"]["torch_threads"] == 1
    assert len(peers["torch_limit"]["runs"]) == 2 and _positive(peers["torch_limit"]["us_per_request"])
    runtime = peers["pack_runtime"]
    assert runtime["requests"] == 100 and _positive(runtime["forward_us_per_request"])
    assert runtime["execute_us_per_request"] == pytest.approx(
        runtime["forward_us_per_request"] + runtime["routing_us_per_request"])

    loadgen = on_disk["loadgen"]
    assert [r["generator"] for r in loadgen["runs"]] == ["locust", "raw_asyncio"]
    for r in loadgen["runs"]:
        assert r["failures"] == 0 and r["requests"] > 0 and _positive(r["rps"])
    assert loadgen["summary"]["ratio_locust_over_raw_rps"] == pytest.approx(
        loadgen["summary"]["locust"]["rps"] / loadgen["summary"]["raw_asyncio"]["rps"])

    adfilter = on_disk["adfilter"]
    assert set(adfilter["levels"]) == {"2", "8"} and len(adfilter["runs"]) == 2
    s = adfilter["summary"]
    assert s["rps"] == max(level["rps"] for level in adfilter["levels"].values())
    assert s["ratio_p99_over_budget"] == pytest.approx(s["p99_ms"] / 10.0)

    check_tiny_data_plane_run(on_disk["data_plane"])
    section_file = json.loads((tmp_path / "out" / "data_plane" / DP_JSON_NAME).read_text())
    assert section_file["table"] == on_disk["data_plane"]["table"], "the section also wrote its own JSON"
    assert on_disk["gpu"]["skipped"], "no GPU here: the section says why it did not run"

    # Verdicts are recomputed from the numbers, never stored as text alone.
    by_id = {g["id"]: g for g in on_disk["goals"]}
    assert set(by_id) == {g.id for g in report.GOALS}
    assert by_id["1a"]["met"] == (ratios["packs_grpc_over_fastapi_rps"] >= 3
                                  and ratios["packs_grpc_over_fastapi_p99"] <= 1)
    assert by_id["2"]["met"] == (ratios["packs_grpc_over_floor_rps"] >= 0.8)
    assert by_id["3a"]["met"] == (on_disk["data_plane"]["memory"]["summary"]["ratio_models_per_gib"] >= 60)
    assert by_id["3b"]["status"] == "not evaluated", "6 models cannot decide a 1,000-model goal"
    assert by_id["4"]["met"] == (on_disk["data_plane"]["latency"]["cold"]["p99_ms"] <= 50)
    assert by_id["6"]["met"] == (s["p99_ms"] <= 10)
    assert by_id["7"]["status"] == "not run"
    for goal in on_disk["goals"]:
        if goal["met"] is not None:
            assert goal["status"] == ("met" if goal["met"] else "not met")
    assert report.goals(on_disk) == on_disk["goals"], "the same numbers give the same verdicts"

    text = docs.read_text()
    assert results["goals_table"] in text and "TINY mode" in text and "Not run in this run" in text
    assert "| measurement | packs | baseline | ratio |" in text and results["data_plane"]["table"] in text
    assert (docs.parent / "img" / PLOT_NAME).stat().st_size > 1000
