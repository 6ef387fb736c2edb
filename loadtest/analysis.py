"""From runs and prices to cost per million inferences and the cheapest instance type that meets the SLO.

Cost per million inferences = price_per_hour / (rps * 3600) * 1e6, with rps the throughput of a run
that meets the SLO: a run that is cheap only because it overloads the server does not count. Per
instance type the best run is the one with the highest throughput within the SLO; the recommendation
is the instance type whose best run has the lowest cost per million.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from loadtest.prices import PriceTable
from loadtest.results import Run

SECONDS_PER_HOUR = 3600
PER_MILLION = 1e6


def cost_per_million(usd_per_hour: float, rps: float) -> float:
    """USD for one million inferences at a steady `rps` on an instance billed `usd_per_hour`."""
    if rps <= 0:
        return math.inf
    return usd_per_hour / (rps * SECONDS_PER_HOUR) * PER_MILLION


@dataclass(frozen=True)
class Slo:
    p99_ms: float
    max_failure_ratio: float = 0.0

    def met_by(self, run: Run) -> bool:
        stat = run.stat
        return (stat.requests > 0 and not math.isnan(stat.p99_ms) and stat.p99_ms <= self.p99_ms
                and run.failure_ratio <= self.max_failure_ratio)


@dataclass(frozen=True)
class RunRow:
    run: Run
    usd_per_hour: float | None
    meets_slo: bool

    @property
    def cost_per_million(self) -> float | None:
        return None if self.usd_per_hour is None else cost_per_million(self.usd_per_hour, self.run.stat.rps)


@dataclass(frozen=True)
class InstanceSummary:
    instance_type: str
    usd_per_hour: float | None
    peak_rps: float  # highest throughput of any run, within the SLO or not
    best: RunRow | None  # highest throughput within the SLO

    @property
    def cost_per_million(self) -> float | None:
        return self.best.cost_per_million if self.best else None


@dataclass(frozen=True)
class Analysis:
    slo: Slo
    prices: PriceTable
    rows: tuple[RunRow, ...]
    summaries: tuple[InstanceSummary, ...]

    @property
    def recommendation(self) -> InstanceSummary | None:
        """The instance type with the lowest cost per million among those that met the SLO at a price."""
        candidates = [s for s in self.summaries if s.cost_per_million is not None]
        return min(candidates, key=lambda s: (s.cost_per_million, s.best.run.stat.p99_ms), default=None)

    @property
    def unpriced(self) -> list[str]:
        return sorted({s.instance_type for s in self.summaries if s.usd_per_hour is None})


def analyse(runs: list[Run], prices: PriceTable, slo: Slo) -> Analysis:
    rows = tuple(RunRow(r, prices.price(r.instance_type), slo.met_by(r))
                 for r in sorted(runs, key=lambda r: (r.instance_type, r.offered_load)))
    summaries = []
    for instance_type in sorted({r.run.instance_type for r in rows}):
        mine = [r for r in rows if r.run.instance_type == instance_type]
        within = [r for r in mine if r.meets_slo]
        summaries.append(InstanceSummary(
            instance_type, prices.price(instance_type), max(r.run.stat.rps for r in mine),
            max(within, key=lambda r: r.run.stat.rps, default=None)))
    return Analysis(slo, prices, rows, tuple(summaries))
