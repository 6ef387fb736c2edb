"""Bid requests (synthetic OpenRTB) through locust and the asyncio driver to the real `adfilter` model."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from adfilter.train import TrainConfig, train
from adfilter.triton_repo import MODEL_NAME, TritonSettings, build_triton_model
from fleet.triton_server import TritonServer
from loadtest.bid_payloads import bid_request_bodies
from loadtest.raw_driver import run_adfilter
from loadtest.results import parse_stats_csv

pytestmark = pytest.mark.slow
LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtest" / "bid_requests.py"
LOCUST = Path(sys.executable).with_name("locust")
USERS, RPS_PER_USER, SECONDS = 8, 25, 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("adfilter")
    # A quick model is enough: the load test measures serving, not the filter's accuracy.
    train(TrainConfig(rows=3000, seed=5, epochs=1), root / "model")
    build_triton_model(root / "model", root / "repo", TritonSettings())
    with TritonServer(root / "repo", load_models=(MODEL_NAME,)) as running:
        yield running


def test_locust_sends_varied_bid_requests_at_the_target_rate(server: TritonServer, tmp_path: Path) -> None:
    prefix = tmp_path / "bids"
    command = [str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", str(USERS), "-r", str(USERS),
               "-t", f"{SECONDS}s", "--rps-per-user", str(RPS_PER_USER), "--csv", str(prefix),
               "--host", server.grpc_url, "--bid-requests", "500", "--only-summary"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 60)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    result = parse_stats_csv(Path(f"{prefix}_stats.csv").read_text())
    total = result.aggregated
    assert total.failures == 0
    assert {s.name for s in result.stats} >= {"adfilter:kept", "Aggregated"}
    assert {s.name for s in result.stats} <= {"adfilter:kept", "adfilter:filtered", "Aggregated"}
    # Paced users: the rate is close to the target, not as fast as the server can go.
    assert 0.5 * USERS * RPS_PER_USER < total.rps <= 1.1 * USERS * RPS_PER_USER
    assert Path(f"{prefix}_run.json").exists()


def test_peak_rate_client_decides_every_request(server: TritonServer) -> None:
    bodies = bid_request_bodies(500, seed=3)
    result, filtered_share = asyncio.run(run_adfilter(server.grpc_url, bodies, concurrency=16, duration_s=3))
    summary = result.summary()
    assert summary["failures"] == 0 and summary["rps"] > 0, summary
    assert summary["p50_ms"] <= summary["p99_ms"]
    assert 0.0 <= filtered_share <= 1.0
    print(f"\nadfilter peak: {summary['rps']} rps, p99 {summary['p99_ms']} ms, filtered {filtered_share:.1%}")
