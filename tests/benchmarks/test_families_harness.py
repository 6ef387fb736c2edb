"""benchmarks/families.py measures what it claims: a tiny run on the real tritonserver writes a complete JSON
whose goal verdicts follow from its own numbers, and its report keeps the other sections of the shared doc.
Timing values are not judged here (the benchmark's findings are in docs/benchmarks-families.md)."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from benchmarks.families import QUICK, run
from benchmarks.families_report import FAMILIES_BEGIN, FAMILIES_END, goals

pytestmark = pytest.mark.slow
TINY = replace(QUICK, mode="tiny", big="bert-mini", cold_members=2, whole_cold_members=1, quiet_seconds=1.0,
               zoo={"tiny": 6, "bert-mini": 2}, zoo_budget=48 * 2**20, zoo_seconds=2.0, stack_members=4,
               stack_kinds=("tiny",), stack_seconds=1.0, stack_knob=2, micro_rounds=1)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_a_tiny_families_run_writes_consistent_results_and_keeps_the_docs_other_sections(tmp_path):
    docs = tmp_path / "benchmarks-families.md"
    docs.write_text("# Benchmarks: architecture families\n\n## Small-member path vs 1f4cc98\n\nkept text\n")
    results = run(TINY, tmp_path / "out", docs)
    on_disk = json.loads((tmp_path / "out" / "families.json").read_text())
    assert on_disk["config"]["mode"] == "tiny" and len(on_disk["load_average"]) == 2

    family, whole = on_disk["cold"]["family"], on_disk["cold"]["whole"]
    assert family["members"] == 2 and whole["members"] == 1
    for row in family["rows"] + whole["rows"]:
        assert row["overhead_s"] == pytest.approx(row["first_s"] - row["second_s"])
        assert _positive(row["jit_load_s"]) and _positive(row["read_weights_s"])
    assert family["overhead_over_jit_load"] == pytest.approx(family["overhead_s"] / family["jit_load_s"])
    assert family["loads"] >= 1 + 2, "the hot member and each cold one loaded"
    assert family["program_mib"] > 0 and whole["program_mib"] == 0, "only the family path loads a program"
    assert family["hot_quiet"]["requests"] > 0 and family["hot_loading"]["requests"] > 0

    zoo = on_disk["zoo"]
    assert [(r["path"], r["round"]) for r in zoo["runs"]] == [("whole", 0), ("family", 0), ("whole", 1),
                                                             ("family", 1)], "A B A B"
    assert zoo["over_budget"] > 1 and all(r["ok"] > 0 for r in zoo["runs"])
    assert zoo["rps_ratio"] == pytest.approx(zoo["rps"]["family"] / zoo["rps"]["whole"])

    stacked = on_disk["stacked"]["tiny"]
    assert [r["stack_members"] for r in stacked["runs"]] == [2, 0, 2, 0]
    assert any(r["stacked_members"] > 0 for r in stacked["runs"] if r["stack_members"] == 2)
    assert all(r["stacked_members"] == 0 for r in stacked["runs"] if r["stack_members"] == 0)
    assert stacked["in_process"]["max_abs_difference"] < 1e-4, "stacked outputs equal per-member ones to rounding"
    assert [b["format"] for b in on_disk["in_process"]["binding"]] == ["torchscript", "torchscript", "torch_export"]
    assert all(b["same_outputs"] for b in on_disk["in_process"]["binding"])

    verdicts = {goal: met for goal, met, _ in goals(results)}

    def verdict(words: str):
        return next(met for goal, met in verdicts.items() if words in goal)
    assert verdict("load overhead <= 0.25x") == (family["overhead_over_jit_load"] <= 0.25)
    assert verdict("forward throughput") == (stacked["in_process"]["speedup"] >= 1.5)
    assert verdict(">= 3x the whole-artifact path's rps") == (zoo["rps_ratio"] >= 3)
    assert all(row["stub_load_s"] > 0 for row in family["rows"]), "the stub timed each load"
    text = docs.read_text()
    assert "## Small-member path vs 1f4cc98\n\nkept text" in text, "another benchmark's section is kept"
    assert text.count(FAMILIES_BEGIN) == 1 and text.count(FAMILIES_END) == 1
    run_again = text.replace("kept text", "kept text, edited")
    docs.write_text(run_again)
    from benchmarks.families_report import write_doc
    write_doc(results, docs)
    assert docs.read_text().count(FAMILIES_BEGIN) == 1 and "kept text, edited" in docs.read_text()
