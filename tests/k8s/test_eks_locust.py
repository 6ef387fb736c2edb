"""Reading locust's stats back from the master pod's log."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from control_plane.targets.base import TargetError
from control_plane.targets.eks.locust import STATS_BEGIN, STATS_END, result_from_log

# Runs in a subprocess: importing locust monkey-patches the interpreter with gevent.
_WRITE_REAL_CSV = """
import csv, io
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV
env = Environment()
for ms in (3, 4, 5, 40):
    env.stats.log_request("grpc", "mlp-pack-0000", ms, 64)
env.stats.log_request("grpc", "cnn-pack-0001", 9, 64)
env.stats.log_error("grpc", "cnn-pack-0001", RuntimeError("model not loaded"))
env.stats.get("idle-model", "grpc")
out = io.StringIO()
StatsCSV(env, PERCENTILES_TO_REPORT).requests_csv(csv.writer(out))
print(out.getvalue(), end="")
"""


@pytest.fixture(scope="module")
def real_stats_csv() -> str:
    """A *_stats.csv written by the installed locust itself, so a format change fails here."""
    done = subprocess.run([sys.executable, "-c", _WRITE_REAL_CSV], capture_output=True, text=True, check=True)
    return done.stdout


def master_log(csv_text: str) -> str:
    return ("[2026-01-01 00:00:00] master/INFO/locust.main: Starting Locust 2.47.0\n"
            "[2026-01-01 00:01:00] master/INFO/locust.main: Shutting down (exit code 0)\n"
            f"{STATS_BEGIN}\n{csv_text}{STATS_END}\n")


def test_parses_every_row_of_a_real_locust_stats_csv(real_stats_csv: str) -> None:
    result = result_from_log(master_log(real_stats_csv))
    by_name = {stat.name: stat for stat in result.stats}
    assert set(by_name) == {"mlp-pack-0000", "cnn-pack-0001", "idle-model", "Aggregated"}
    mlp = by_name["mlp-pack-0000"]
    assert (mlp.requests, mlp.failures, mlp.p50_ms, mlp.p90_ms, mlp.p99_ms) == (4, 0, 5.0, 40.0, 40.0)
    assert (result.aggregated.requests, result.aggregated.failures) == (5, 1)
    assert result.aggregated.rps > 0
    assert math.isnan(by_name["idle-model"].p99_ms)  # locust writes N/A for a name with no responses
    assert result.stats_csv == real_stats_csv  # kept verbatim for reports


def test_takes_the_last_stats_block_of_the_log(real_stats_csv: str) -> None:
    stale = f"{STATS_BEGIN}\nType,Name\n{STATS_END}\n"
    assert result_from_log(stale + master_log(real_stats_csv)).stats_csv == real_stats_csv


def test_a_log_without_stats_says_the_run_did_not_finish() -> None:
    log = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'tritonclient'\n"
    with pytest.raises(TargetError, match="did not finish(.|\n)*No module named 'tritonclient'"):
        result_from_log(log)


def test_stats_without_an_aggregated_row_are_rejected() -> None:
    with pytest.raises(TargetError, match="no 'Aggregated' row"):
        result_from_log(master_log("Type,Name,Request Count,Failure Count\n"))
