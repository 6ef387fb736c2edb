"""Request rates per pack, the members traffic keeps warm, and what each cache tier holds, read from the
servers' Prometheus metrics (one scrape per server per reconcile tick serves all three).

Triton counts successful requests per model (`nv_inference_request_success{model=<pack>}`) and the pack
runtime counts requests per member (`fleet_member_requests_total{pack, member}`). Both are counters, so a
rate is the difference between two scrapes over the time between them; a counter that went down (the
server or stub restarted) starts a new baseline instead of giving a negative rate.

The pack runtime also exports each tier's state per pack instance (`fleet_tier_*{pack, tier}`, tier in
host, gpu, neuron); a server's usage of a tier is their sum over its packs (and instances: an inf2 pack
has one per NeuronCore).
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from model_repository.contract import ServerMetrics, TierUsage, parse_metrics

__all__ = ["Scrape", "TierUsage", "TrafficMeter", "parse", "scrape_of", "tier_usage_document"]


@dataclass
class Scrape:
    at: float
    packs: dict[str, float]  # pack -> successful requests so far
    members: dict[tuple[str, str], float]  # (pack, member) -> requests so far
    tiers: dict[str, TierUsage] = field(default_factory=dict)  # tier -> usage summed over packs


def scrape_of(metrics: ServerMetrics, at: float | None = None) -> Scrape:
    """The counters this module needs from one server's parsed metrics."""
    return Scrape(time.monotonic() if at is None else at, metrics.model_successes, metrics.member_requests,
                  metrics.tiers)


def parse(text: str, at: float | None = None) -> Scrape:
    """The counters this module needs from one /metrics page (model_repository.contract.parse_metrics)."""
    return scrape_of(parse_metrics(text), at)


@dataclass
class TrafficMeter:
    """Keeps the last scrape per server; answers the fleet-wide rate per pack and its recent members."""

    hot_window_s: float = 300.0
    _last: dict[str, Scrape] = field(default_factory=dict)
    _rates: dict[str, dict[str, float]] = field(default_factory=dict)  # server -> pack -> rps
    _member_seen: dict[tuple[str, str], float] = field(default_factory=dict)  # (pack, member) -> when
    _tiers: dict[str, dict] = field(default_factory=dict)  # server -> its tier_usage document
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, server: str, scrape: Scrape) -> None:
        with self._lock:
            previous = self._last.get(server)
            self._last[server] = scrape
            if scrape.tiers:
                self._tiers[server] = tier_usage_document(scrape.tiers)
            if previous is None or scrape.at <= previous.at:
                return
            elapsed = scrape.at - previous.at
            rates = {}
            for pack, count in scrape.packs.items():
                delta = count - previous.packs.get(pack, 0.0)
                rates[pack] = delta / elapsed if delta >= 0 else 0.0
            self._rates[server] = rates
            for key, count in scrape.members.items():
                if count > previous.members.get(key, 0.0):
                    self._member_seen[key] = scrape.at

    def forget(self, server: str) -> None:
        with self._lock:
            self._last.pop(server, None)
            self._rates.pop(server, None)
            self._tiers.pop(server, None)

    def take_tier_usage(self) -> dict[str, dict]:
        """Per server, its tier usage from the scrapes since the last call (to store for the API)."""
        with self._lock:
            usage, self._tiers = self._tiers, {}
            return usage

    def rates(self) -> dict[str, float]:
        """Requests per second per pack, summed over every server that reported it."""
        total: dict[str, float] = {}
        with self._lock:
            for rates in self._rates.values():
                for pack, rate in rates.items():
                    total[pack] = total.get(pack, 0.0) + rate
        return total

    def hot_members(self, now: float | None = None) -> dict[str, set[str]]:
        """Per pack, the members called within the hot window."""
        now = time.monotonic() if now is None else now
        hot: dict[str, set[str]] = {}
        with self._lock:
            for (pack, member), seen in list(self._member_seen.items()):
                if now - seen <= self.hot_window_s:
                    hot.setdefault(pack, set()).add(member)
                else:
                    del self._member_seen[(pack, member)]
        return hot


def tier_usage_document(tiers: dict[str, TierUsage], at: datetime | None = None) -> dict:
    """What the registry stores per server (servers.tier_usage) and the API shows: when it was read, and
    per tier its resident bytes and members, budget, hits, misses, evictions, loads and load seconds."""
    return {"scraped_at": (at or datetime.now(UTC)).isoformat(),
            "tiers": {name: {k: (round(v, 3) if k == "load_seconds" else int(v)) for k, v in asdict(usage).items()}
                      for name, usage in sorted(tiers.items())}}
