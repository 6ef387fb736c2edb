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

from prometheus_client.parser import text_string_to_metric_families

PACK_COUNTER = "nv_inference_request_success"
MEMBER_COUNTER = "fleet_member_requests"  # the parser drops the _total suffix from the family name
TIER_PREFIX = "fleet_tier_"
TIER_GAUGES = ("resident_bytes", "resident_members", "budget_bytes")
TIER_COUNTERS = ("hits", "misses", "evictions", "loads", "load_seconds")


@dataclass
class TierUsage:
    """One tier of one server, summed over its pack instances; counters since each stub started."""

    resident_bytes: float = 0.0
    resident_members: float = 0.0
    budget_bytes: float = 0.0
    hits: float = 0.0
    misses: float = 0.0
    evictions: float = 0.0
    loads: float = 0.0  # loads into the tier (promotions, for the device tiers)
    load_seconds: float = 0.0


@dataclass
class Scrape:
    at: float
    packs: dict[str, float]  # pack -> successful requests so far
    members: dict[tuple[str, str], float]  # (pack, member) -> requests so far
    tiers: dict[str, TierUsage] = field(default_factory=dict)  # tier -> usage summed over packs


def parse(text: str, at: float | None = None) -> Scrape:
    """The counters this module needs from one /metrics page."""
    scrape = Scrape(time.monotonic() if at is None else at, {}, {})
    for family in text_string_to_metric_families(text):
        if family.name == PACK_COUNTER:
            for sample in family.samples:
                pack = sample.labels.get("model")
                if pack:
                    scrape.packs[pack] = scrape.packs.get(pack, 0.0) + sample.value
        elif family.name.startswith(TIER_PREFIX):
            _add_tier(scrape.tiers, family)
        elif family.name == MEMBER_COUNTER:
            for sample in family.samples:
                if sample.name.endswith("_total") and "pack" in sample.labels and "member" in sample.labels:
                    key = (sample.labels["pack"], sample.labels["member"])
                    scrape.members[key] = scrape.members.get(key, 0.0) + sample.value
    return scrape


def _add_tier(tiers: dict[str, TierUsage], family) -> None:
    kind = family.name.removeprefix(TIER_PREFIX)
    if kind not in TIER_GAUGES and kind not in TIER_COUNTERS:
        return
    for sample in family.samples:
        tier = sample.labels.get("tier")
        if not tier or (kind in TIER_COUNTERS and not sample.name.endswith("_total")):
            continue
        usage = tiers.setdefault(tier, TierUsage())
        setattr(usage, kind, getattr(usage, kind) + sample.value)


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
