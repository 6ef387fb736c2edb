"""Request rates per pack and the members traffic keeps warm, read from the servers' Prometheus metrics.

Triton counts successful requests per model (`nv_inference_request_success{model=<pack>}`) and the pack
runtime counts requests per member (`fleet_member_requests_total{pack, member}`). Both are counters, so a
rate is the difference between two scrapes over the time between them; a counter that went down (the
server or stub restarted) starts a new baseline instead of giving a negative rate.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

PACK_COUNTER = "nv_inference_request_success"
MEMBER_COUNTER = "fleet_member_requests"  # the parser drops the _total suffix from the family name


@dataclass
class Scrape:
    at: float
    packs: dict[str, float]  # pack -> successful requests so far
    members: dict[tuple[str, str], float]  # (pack, member) -> requests so far


def parse(text: str, at: float | None = None) -> Scrape:
    """The counters this module needs from one /metrics page."""
    scrape = Scrape(time.monotonic() if at is None else at, {}, {})
    for family in text_string_to_metric_families(text):
        if family.name == PACK_COUNTER:
            for sample in family.samples:
                pack = sample.labels.get("model")
                if pack:
                    scrape.packs[pack] = scrape.packs.get(pack, 0.0) + sample.value
        elif family.name == MEMBER_COUNTER:
            for sample in family.samples:
                if sample.name.endswith("_total") and "pack" in sample.labels and "member" in sample.labels:
                    key = (sample.labels["pack"], sample.labels["member"])
                    scrape.members[key] = scrape.members.get(key, 0.0) + sample.value
    return scrape


@dataclass
class TrafficMeter:
    """Keeps the last scrape per server; answers the fleet-wide rate per pack and its recent members."""

    hot_window_s: float = 300.0
    _last: dict[str, Scrape] = field(default_factory=dict)
    _rates: dict[str, dict[str, float]] = field(default_factory=dict)  # server -> pack -> rps
    _member_seen: dict[tuple[str, str], float] = field(default_factory=dict)  # (pack, member) -> when
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, server: str, scrape: Scrape) -> None:
        with self._lock:
            previous = self._last.get(server)
            self._last[server] = scrape
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
