"""Locust's stats, carried back from a Kubernetes Job through the master pod's log.

The master Job (k8s/modules/locust/master.yaml) prints its *_stats.csv between two marker lines when
the run ends. Reading the log needs no shared volume, object store or extra permission beyond
pods/log, and the CSV is the same file a local run writes, so reports treat both alike.
"""
from __future__ import annotations

import csv
import io
import math

from control_plane.targets.base import LoadTestResult, LoadTestStat, TargetError

STATS_BEGIN = "=== triton-fleet locust stats csv begin ==="
STATS_END = "=== triton-fleet locust stats csv end ==="


def stats_csv_from_log(log: str) -> str:
    """The last stats block in a master log (a restarted container would print an earlier one)."""
    lines = log.splitlines()
    try:
        begin = len(lines) - 1 - lines[::-1].index(STATS_BEGIN)
        end = lines.index(STATS_END, begin)
    except ValueError:
        tail = "\n".join(lines[-20:]) or "(empty log)"
        raise TargetError("the locust master's log has no stats block, so the run did not finish; its last "
                          f"lines:\n{tail}") from None
    return "\n".join(lines[begin + 1:end]) + "\n"


def parse_stats_csv(text: str) -> LoadTestResult:
    """LoadTestStat rows from locust's *_stats.csv (one per request name, then 'Aggregated')."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "Aggregated" not in {row.get("Name") for row in rows}:
        raise TargetError("the locust stats CSV has no 'Aggregated' row: the run sent no requests or the "
                          "locustfile failed to load; check the master's log")
    stats = [LoadTestStat(name=row["Name"], requests=int(row["Request Count"]),
                          failures=int(row["Failure Count"]), rps=float(row["Requests/s"]),
                          p50_ms=_ms(row["50%"]), p90_ms=_ms(row["90%"]), p99_ms=_ms(row["99%"]))
             for row in rows]
    return LoadTestResult(stats=stats, stats_csv=text)


def _ms(value: str) -> float:
    """Locust writes N/A for percentiles of a name that got no response."""
    return math.nan if value == "N/A" else float(value)
