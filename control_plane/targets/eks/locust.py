"""Locust's stats, carried back from a Kubernetes Job through the master pod's log.

The master Job (k8s/modules/locust/master.yaml) prints its *_stats.csv between two marker lines when
the run ends. Reading the log needs no shared volume, object store or extra permission beyond
pods/log, and the CSV is the same file a local run writes, so it is parsed by the same code
(loadtest.results) and reports treat both alike.
"""
from __future__ import annotations

from control_plane.targets.base import LoadTestResult, TargetError
from loadtest.results import ResultsError
from loadtest.results import parse_stats_csv as parse_locust_csv

STATS_BEGIN = "=== triton-fleet locust stats csv begin ==="
STATS_END = "=== triton-fleet locust stats csv end ==="


def result_from_log(log: str) -> LoadTestResult:
    """The LoadTestResult of the last stats block in a master log (a restarted container would have
    printed an earlier one)."""
    lines = log.splitlines()
    try:
        begin = len(lines) - 1 - lines[::-1].index(STATS_BEGIN)
        end = lines.index(STATS_END, begin)
    except ValueError:
        tail = "\n".join(lines[-20:]) or "(empty log)"
        raise TargetError("the locust master's log has no stats block, so the run did not finish; its last "
                          f"lines:\n{tail}") from None
    try:
        return parse_locust_csv("\n".join(lines[begin + 1:end]) + "\n", "the locust master's stats")
    except ResultsError as error:
        raise TargetError(f"{error}; check the locustfile and the master's log") from None
