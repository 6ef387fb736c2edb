"""Locust and the asyncio driver against the real tritonserver serving 1,000 generated models in packs."""
from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from control_plane.targets.base import LoadTestResult
from fleet.triton_server import TritonServer
from loadtest.analysis import Slo
from loadtest.catalogue import load_catalogue
from loadtest.prices import DEFAULT_PRICES, load_prices
from loadtest.raw_driver import DriverResult, run_models
from loadtest.results import parse_stats_csv
from loadtest.sweep import SweepPlan, run_sweep
from loadtest.workload import build_workload
from model_repository.generator import generate
from model_repository.packing import build_repository

pytestmark = pytest.mark.slow
MODELS = 1000
PACK_SIZE = 200
USERS = 16
LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtest" / "triton_models.py"
LOCUST = Path(sys.executable).with_name("locust")


@dataclass(frozen=True)
class Fleet:
    models_dir: Path
    server: TritonServer


@dataclass(frozen=True)
class LocustRun:
    returncode: int
    output: str
    prefix: Path
    result: LoadTestResult


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("loadtest-fleet")
    generate(MODELS, root / "models", seed=21)
    plans = build_repository(root / "models", root / "repo", pack_size=PACK_SIZE)
    with TritonServer(root / "repo", load_models=tuple(p.name for p in plans)) as server:
        assert server.ready_models() == {p.name for p in plans}
        yield Fleet(root / "models", server)


def run_locust(fleet: Fleet, out: Path, *extra: str, seconds: int = 20) -> LocustRun:
    prefix = out / "run"
    command = [str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", str(USERS), "-r", str(USERS),
               "-t", f"{seconds}s", "--csv", str(prefix), "--html", f"{prefix}.html",
               "--host", fleet.server.grpc_url, "--models-from", str(fleet.models_dir / "manifest.json"),
               "--pack-size", str(PACK_SIZE), "--mix", "zipf", "--zipf-s", "1.1", "--only-summary", *extra]
    # The timeout is the guard against a locust that prints its summary and never exits.
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    output = done.stdout + done.stderr
    stats = Path(f"{prefix}_stats.csv")
    assert stats.exists(), output[-3000:]
    return LocustRun(done.returncode, output, prefix, parse_stats_csv(stats.read_text()))


@pytest.fixture(scope="module")
def locust_run(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> LocustRun:
    return run_locust(fleet, tmp_path_factory.mktemp("locust"))


@pytest.fixture(scope="module")
def raw_run(fleet: Fleet, locust_run: LocustRun) -> DriverResult:
    """Same mix, same concurrency as the locust users; after locust, so members are equally warm."""
    workload = build_workload(load_catalogue(str(fleet.models_dir), PACK_SIZE, None), "zipf", 1.1)
    return asyncio.run(run_models(workload, fleet.server.grpc_url, concurrency=USERS, duration_s=6))


def test_headless_locust_exits_by_itself_and_spreads_load_over_many_models(locust_run: LocustRun) -> None:
    assert locust_run.returncode == 0, locust_run.output[-3000:]
    total = locust_run.result.aggregated
    members = [s for s in locust_run.result.stats if s.name != "Aggregated"]
    assert total.requests > 1000 and total.failures == 0, locust_run.output[-3000:]
    assert len({s.name for s in members}) > 200
    assert sum(s.requests for s in members) == total.requests
    assert Path(f"{locust_run.prefix}.html").stat().st_size > 0


def test_the_run_records_where_it_was_measured(locust_run: LocustRun) -> None:
    meta = json.loads(Path(f"{locust_run.prefix}_run.json").read_text())
    assert meta["users"] == USERS and meta["options"]["mix"] == "zipf" and meta["options"]["pack_size"] == PACK_SIZE
    assert meta["machine"]["cpus"] >= 1 and "token" not in meta["options"]


def test_raw_driver_returns_sane_statistics(raw_run: DriverResult) -> None:
    summary = raw_run.summary()
    assert summary["failures"] == 0, summary
    assert summary["requests"] > 1000 and summary["rps"] > 0
    assert 0 < summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] < 10_000


def test_locust_rate_relative_to_the_raw_ceiling(locust_run: LocustRun, raw_run: DriverResult) -> None:
    """No timing assertion: client and server share this machine's cores; the ratio is printed."""
    locust_rps, raw_rps = locust_run.result.aggregated.rps, raw_run.rps
    assert locust_rps > 0 and raw_rps > 0
    print(f"\nlocust {locust_rps:.1f} rps / raw asyncio {raw_rps:.1f} rps = {locust_rps / raw_rps:.2f} "
          f"({USERS} users vs {USERS} in flight, {MODELS} models, zipf s=1.1)")


def test_open_loop_rate_is_held_when_the_server_keeps_up(fleet: Fleet) -> None:
    workload = build_workload(load_catalogue(str(fleet.models_dir), PACK_SIZE, None), "uniform")
    result = asyncio.run(run_models(workload, fleet.server.grpc_url, concurrency=32, duration_s=3, rate=100))
    assert result.failures == 0 and result.successes == 300
    assert result.rps == pytest.approx(100, rel=0.1) and not math.isnan(result.percentile_ms(99))


def test_locust_with_worker_processes_aggregates_every_worker(fleet: Fleet, tmp_path: Path) -> None:
    run = run_locust(fleet, tmp_path, "--processes", "2", seconds=8)
    assert run.returncode == 0, run.output[-3000:]
    assert run.result.aggregated.failures == 0 and run.result.aggregated.requests > 100
    assert json.loads(Path(f"{run.prefix}_run.json").read_text())["workers"] == 2


def test_a_missing_catalogue_stops_locust_with_an_error(fleet: Fleet, tmp_path: Path) -> None:
    command = [str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-t", "30s",
               "--host", fleet.server.grpc_url, "--models-from", str(tmp_path / "nowhere")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "no manifest.json" in done.stdout + done.stderr


def test_a_sweep_runs_each_user_count_and_reports_cost_per_million(fleet: Fleet, tmp_path: Path) -> None:
    plan = SweepPlan("models", fleet.server.grpc_url, (4, 2), 5, "c7g.xlarge",
                     ("--models-from", str(fleet.models_dir / "manifest.json"), "--pack-size", str(PACK_SIZE)))
    runs, files = run_sweep(plan, tmp_path / "sweep", load_prices(DEFAULT_PRICES), Slo(p99_ms=5_000), "sweep")
    assert [run.offered_load for run in runs] == [2.0, 4.0], "points run in order of rising load"
    assert all(run.stat.failures == 0 and run.stat.requests > 0 for run in runs)
    report = files.markdown.read_text()
    assert "c7g.xlarge" in report and "cost per" in report.lower()
    assert len(files.figures) == 2 and all(figure.stat().st_size > 1000 for figure in files.figures)
    assert files.analysis.recommendation is not None
