"""The seeds' benchmark harness (benchmarks.seeds_baseline) end to end on a tiny zoo: correctness of what it
measures and reports, not timing."""
from __future__ import annotations

import psutil
import pytest

from benchmarks.seeds_baseline import SeedsConfig, report, run

pytestmark = pytest.mark.slow


def test_seeds_benchmark_compares_packs_and_one_process_per_model_on_the_same_models(tmp_path):
    config = SeedsConfig(models=6, profile="tiny", rates=(10.0,), seconds=1.0, rounds=1, max_processes=2)
    results = run(tmp_path, config, progress=False)
    density = results["density"]
    assert density["packs"]["models"] == 6 and density["packs"]["pss"] > 0
    assert 1 <= density["seeds"]["processes"] <= 2
    assert density["seeds"]["stopped_by"] in ("process cap (2)", "memory budget (the packs' PSS)")
    assert results["seed_models"] == ["mlp-00000", "cnn-00001"][:density["seeds"]["processes"]]
    contenders = {r["contender"] for r in results["runs"]}
    assert contenders == {"packs", "seeds", "packs_all_models"}
    for r in results["runs"]:
        assert r["failures"] == 0 and r["completed"] > 0, r
    assert results["ratios"]["models_per_gib"] > 0
    text = report(results)
    assert "models servable per GiB" in text and "| seeds |" in text
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if "--only" in (p.info["cmdline"] or [])
                 and str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == [], "every seed process is stopped"
