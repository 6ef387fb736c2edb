"""`fleet adfilter bench`: the measurement behind the figures in docs/adfilter.md runs and reports sanely."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fleet.cli import main


def test_bench_reports_featurize_cost_and_scorer_throughput(trained_model: Path) -> None:
    result = CliRunner().invoke(main, ["adfilter", "bench", "--model", str(trained_model), "--n", "500"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["requests"] == 500
    assert 0 < report["featurize_us_per_request"] < 10_000
    assert report["scorer_requests_per_s"] > 0
    assert report["torch_threads"] == 1
