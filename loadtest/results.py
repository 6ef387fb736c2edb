"""Locust results as the report reads them: one run = one *_stats.csv tagged with instance type and load.

The tag says which instance type's price applies; where the numbers were really measured comes from the
run's PREFIX_run.json (written by the locustfiles) and is shown beside them.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from loadtest.run_meta import read_meta_for

AGGREGATED = "Aggregated"
NOT_RECORDED = "not recorded (the run wrote no PREFIX_run.json)"


@dataclass(frozen=True)
class LoadTestStat:
    """One row of locust's *_stats.csv (a request name, or 'Aggregated')."""

    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float


@dataclass(frozen=True)
class LoadTestResult:
    stats: list[LoadTestStat]
    stats_csv: str  # locust's raw *_stats.csv, kept for reports

    @property
    def aggregated(self) -> LoadTestStat:
        return next(s for s in self.stats if s.name == "Aggregated")


class ResultsError(ValueError):
    """A run's CSV or tag is unusable; the message names the file or the tag."""


def _number(value: str) -> float:
    """Locust writes N/A for the percentiles of a name that got no response."""
    return math.nan if value in ("", "N/A") else float(value)


def parse_stats_csv(text: str, source: str = "stats CSV") -> LoadTestResult:
    """LoadTestStat rows of locust's *_stats.csv (one per request name, then 'Aggregated')."""
    rows = list(csv.DictReader(io.StringIO(text)))
    try:
        stats = [LoadTestStat(name=row["Name"], requests=int(row["Request Count"]),
                              failures=int(row["Failure Count"]), rps=_number(row["Requests/s"]),
                              p50_ms=_number(row["50%"]), p90_ms=_number(row["90%"]), p99_ms=_number(row["99%"]))
                 for row in rows]
    except (KeyError, TypeError, ValueError) as error:
        raise ResultsError(f"{source} is not a locust *_stats.csv: {error!r}") from None
    if AGGREGATED not in {s.name for s in stats}:
        raise ResultsError(f"{source} has no 'Aggregated' row: the run sent no requests")
    return LoadTestResult(stats=stats, stats_csv=text)


@dataclass(frozen=True)
class Run:
    """One locust run: its aggregated statistics, the instance type it is priced as, its offered load."""

    source: Path
    instance_type: str
    offered_load: float
    measured_on: str
    result: LoadTestResult

    @property
    def stat(self) -> LoadTestStat:
        return self.result.aggregated

    @property
    def failure_ratio(self) -> float:
        return self.stat.failures / self.stat.requests if self.stat.requests else 1.0


def parse_run_tag(tag: str) -> tuple[Path, str, float]:
    """'STATS_CSV:INSTANCE_TYPE:OFFERED_LOAD' (the path may itself contain ':')."""
    parts = tag.rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ResultsError(f"run '{tag}' is not STATS_CSV:INSTANCE_TYPE:OFFERED_LOAD")
    path, instance_type, load = parts
    try:
        offered = float(load)
    except ValueError:
        raise ResultsError(f"run '{tag}': offered load '{load}' is not a number") from None
    if offered <= 0:
        raise ResultsError(f"run '{tag}': offered load must be > 0")
    return Path(path), instance_type, offered


def load_run(path: Path, instance_type: str, offered_load: float, measured_on: str | None = None) -> Run:
    """A run from its stats CSV; `measured_on` applies only when the run recorded no machine itself."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ResultsError(f"cannot read {path}: {error}") from None
    meta = read_meta_for(path)
    where = meta.measured_on if meta else (measured_on or NOT_RECORDED)
    return Run(path, instance_type, offered_load, where, parse_stats_csv(text, str(path)))
