"""The report: cost per million inferences by the formula, figures as PNG, cheapest instance within SLO."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from loadtest.analysis import Slo, analyse, cost_per_million
from loadtest.cli import report as report_command
from loadtest.prices import load_prices
from loadtest.report import write_report
from loadtest.results import NOT_RECORDED, ResultsError, load_run, parse_run_tag, parse_stats_csv
from loadtest.run_meta import Machine, RunMeta, write_meta

HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,Min Response Time,"
          "Max Response Time,Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,"
          "99.99%,100%")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (instance type, offered load, requests, failures, rps, p50, p90, p99)
RUNS = [
    ("c7g.xlarge", 8, 40_000, 0, 400.0, 5, 9, 14),
    ("c7g.xlarge", 32, 90_000, 0, 900.0, 18, 30, 45),  # best c7g.xlarge within a 50 ms SLO
    ("c7g.xlarge", 64, 95_000, 0, 950.0, 60, 90, 140),  # faster, but misses the SLO
    ("g4dn.xlarge", 32, 300_000, 0, 3000.0, 6, 9, 12),  # fastest, but dearer per million
    ("c6i.xlarge", 32, 80_000, 2, 800.0, 10, 20, 30),  # failures: misses an SLO that allows none
    ("dev-box", 16, 10_000, 0, 100.0, 3, 4, 5),  # not in the price file
]


def stats_csv(requests: int, failures: int, rps: float, p50: float, p90: float, p99: float) -> str:
    row = (f",Aggregated,{requests},{failures},{p50},{p50},1,{p99 * 2},8,{rps},0,{p50},{p50},{p90},{p90},"
           f"{p90},{p99},{p99},{p99},{p99},{p99},{p99}")
    member = row.replace(",Aggregated,", "grpc,mlp-00001,", 1)
    return f"{HEADER}\n{member}\n{row}\n"


@pytest.fixture
def runs(tmp_path: Path) -> list[str]:
    tags = []
    for k, (instance, load, *numbers) in enumerate(RUNS):
        path = tmp_path / f"run{k}_stats.csv"
        path.write_text(stats_csv(*numbers))
        tags.append(f"{path}:{instance}:{load}")
    return tags


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("| ").split(" | ")] for line in lines[1:]]


def test_cost_per_million_is_price_over_hourly_inferences() -> None:
    assert cost_per_million(0.145, 900.0) == pytest.approx(0.145 / (900 * 3600) * 1e6)
    assert cost_per_million(3.6, 1.0) == pytest.approx(1000.0)
    assert cost_per_million(1.0, 0.0) == float("inf")


def test_report_tables_figures_and_recommendation(runs: list[str], tmp_path: Path) -> None:
    prices = load_prices()
    loaded = [load_run(*parse_run_tag(tag)) for tag in runs]
    files = write_report(loaded, prices, Slo(p99_ms=50), tmp_path / "report")
    markdown = files.markdown.read_text()
    for figure in files.figures:
        assert figure.suffix == ".png" and figure.read_bytes().startswith(PNG_MAGIC)
        assert f"]({figure.name})" in markdown and f'src="{figure.name}"' in files.html.read_text()

    summary = {row[0]: row for row in table_rows(markdown, "Cost per million inferences")}
    best_rps = {"c7g.xlarge": 900.0, "g4dn.xlarge": 3000.0}
    for instance, rps in best_rps.items():
        expected = prices.price(instance) / (rps * 3600) * 1e6
        assert summary[instance][-1] == f"${expected:.4f}"
    assert summary["c6i.xlarge"][3] == "none within SLO" and summary["dev-box"][1] == "no price"

    # c7g.xlarge: 0.145 / (900 * 3600) * 1e6 = $0.0448 per million; g4dn.xlarge: $0.0487.
    recommendation = markdown.split("## Recommendation\n", 1)[1].split("\n## ", 1)[0]
    assert recommendation.strip().startswith("**c7g.xlarge**")
    assert "offered load 32" in recommendation
    assert files.analysis.recommendation.instance_type == "c7g.xlarge"

    every = table_rows(markdown, "All runs")
    assert len(every) == len(RUNS)
    assert [r[8] for r in every if r[0] == "c7g.xlarge"] == ["yes", "yes", "no"]
    assert all(r[-1] == NOT_RECORDED for r in every)
    assert "verify before use" in markdown


def test_a_tighter_slo_changes_the_pick_and_an_impossible_one_says_none(runs: list[str]) -> None:
    loaded = [load_run(*parse_run_tag(tag)) for tag in runs]
    prices = load_prices()
    assert analyse(loaded, prices, Slo(p99_ms=13)).recommendation.instance_type == "g4dn.xlarge"
    # c7g.xlarge's only run within 30 ms is at 400 rps ($0.1007/M), which g4dn.xlarge beats ($0.0487/M).
    tolerant = analyse(loaded, prices, Slo(p99_ms=30, max_failure_ratio=0.001))
    assert tolerant.recommendation.instance_type == "g4dn.xlarge"
    c6i = {s.instance_type: s for s in tolerant.summaries}["c6i.xlarge"]
    assert c6i.best is not None, "2 failures in 80,000 are within a 0.1% failure budget"
    none = analyse(loaded, prices, Slo(p99_ms=4))
    assert none.recommendation is None  # dev-box meets it, but has no price


def test_the_cli_writes_the_report_and_says_none_when_nothing_meets_the_slo(runs: list[str],
                                                                            tmp_path: Path) -> None:
    args = [a for tag in runs for a in ("--run", tag)]
    result = CliRunner().invoke(report_command, [*args, "--slo-p99-ms", "1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "None. No run of a priced instance type" in result.output
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert re.search(r"## Recommendation\n\n\*\*None\.\*\*", markdown)
    bad = CliRunner().invoke(report_command, ["--run", "nowhere.csv:c7g.xlarge:8", "--slo-p99-ms", "5",
                                              "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "cannot read nowhere.csv" in bad.output


def test_runs_are_labelled_with_the_machine_they_were_measured_on(tmp_path: Path) -> None:
    csv_path = tmp_path / "local_stats.csv"
    csv_path.write_text(stats_csv(1000, 0, 100.0, 3, 4, 5))
    machine = Machine(hostname="box", arch="x86_64", cpu_model="Some CPU", cpus=2, memory_gib=24,
                      ec2_instance_type=None)
    write_meta(tmp_path / "local", RunMeta(locustfile="loadtest/triton_models.py", host="127.0.0.1:8001",
                                           users=16, spawn_rate=16, run_time_s=20, workers=1, options={},
                                           machine=machine))
    run = load_run(csv_path, "c7g.xlarge", 16, measured_on="ignored: the run recorded its machine")
    assert run.measured_on == "box: not an AWS EC2 instance (Some CPU, 2 CPUs, 24 GiB); client and server share it"
    ec2 = machine.model_copy(update={"ec2_instance_type": "c7g.xlarge"})
    assert ec2.label.startswith("EC2 c7g.xlarge")


@pytest.mark.parametrize("tag, message", [
    ("a.csv:c7g.xlarge", "is not STATS_CSV:INSTANCE_TYPE:OFFERED_LOAD"),
    ("a.csv:c7g.xlarge:many", "is not a number"),
    ("a.csv:c7g.xlarge:0", "must be > 0"),
])
def test_bad_run_tags_are_refused(tag: str, message: str) -> None:
    with pytest.raises(ResultsError, match=message):
        parse_run_tag(tag)


def test_a_csv_without_an_aggregated_row_or_locust_columns_is_refused() -> None:
    with pytest.raises(ResultsError, match="no 'Aggregated' row"):
        parse_stats_csv(HEADER + "\n")
    with pytest.raises(ResultsError, match="not a locust"):
        parse_stats_csv("a,b\n1,2\n")
    assert parse_run_tag("C:/runs/x_stats.csv:c7g.xlarge:8")[0] == Path("C:/runs/x_stats.csv")
