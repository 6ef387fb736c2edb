"""A load sweep: the same locustfile at rising user counts, then one report.

A single run says little about an instance type: the figure users need is where the latency curve bends,
and the cost per million at the highest load that still meets the SLO. So the sweep runs locust headless
once per user count (each run writes its own CSVs and `_run.json`) and hands every run to the report.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest.analysis import Slo
from loadtest.prices import PriceTable
from loadtest.report import ReportFiles, write_report
from loadtest.results import ResultsError, Run, load_run

LOCUSTFILES = {
    "models": Path(__file__).with_name("triton_models.py"),
    "adfilter": Path(__file__).with_name("bid_requests.py"),
}


class SweepError(RuntimeError):
    """A locust run of the sweep failed in a way that leaves no usable statistics."""


@dataclass(frozen=True)
class SweepPlan:
    """What to run: one locust run per entry of `users`, each `seconds` long, against `host`."""

    workload: str  # a key of LOCUSTFILES
    host: str
    users: tuple[int, ...]
    seconds: int
    instance_type: str
    locust_args: tuple[str, ...] = ()  # passed through to the locustfile (--models-from, --mix, ...)
    processes: int = 1  # locust --processes; >1 when one locust process would be the bottleneck

    def command(self, users: int, prefix: Path) -> list[str]:
        locust = Path(sys.executable).with_name("locust")
        command = [str(locust), "-f", str(LOCUSTFILES[self.workload]), "--headless", "-u", str(users),
                   "-r", str(users), "-t", f"{self.seconds}s", "--csv", str(prefix), "--host", self.host,
                   "--only-summary", *self.locust_args]
        if self.processes > 1:
            command += ["--processes", str(self.processes)]
        return command


def run_point(plan: SweepPlan, users: int, out: Path) -> Run:
    """One locust run; a non-zero exit is fine when it only reflects failed requests (the report counts
    them), but a run without an 'Aggregated' row is not."""
    prefix = out / f"u{users}"
    done = subprocess.run(plan.command(users, prefix), capture_output=True, text=True,
                          timeout=plan.seconds + 120)
    stats = Path(f"{prefix}_stats.csv")
    try:
        return load_run(stats, plan.instance_type, float(users))
    except (ResultsError, OSError) as error:
        tail = (done.stdout + done.stderr)[-2000:]
        raise SweepError(f"locust with {users} users left no statistics ({error}); its output ends:\n{tail}") \
            from None


def run_sweep(plan: SweepPlan, out: Path, prices: PriceTable, slo: Slo, title: str,
              on_point: Callable[[int, Run], None] | None = None) -> tuple[list[Run], ReportFiles]:
    """Run every point in order of rising load, then write OUT/report.md, report.html and the figures."""
    out.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    for users in sorted(set(plan.users)):
        run = run_point(plan, users, out)
        runs.append(run)
        if on_point:
            on_point(users, run)
    return runs, write_report(runs, prices, slo, out, title, "users")


def parse_users(text: str) -> tuple[int, ...]:
    """'4,8,16,32' -> (4, 8, 16, 32); each a positive integer."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--users '{text}' is not a comma-separated list of integers, e.g. 4,8,16,32") from None
    if not values or min(values) < 1:
        raise ValueError(f"--users '{text}' needs at least one user count, each >= 1")
    return values


def describe(users: int, run: Run) -> str:
    stat = run.stat
    return (f"{users:>4} users: {stat.rps:>8.1f} rps, p50 {stat.p50_ms:g} ms, p99 {stat.p99_ms:g} ms, "
            f"{stat.failures} failures of {stat.requests}")

