"""Requests each Triton server answered during a run, from its own Prometheus counters.

Why: through an NLB the load generator sees one address, so its figure is the fleet's total; whether every
task got its share (or a few flows pinned the load on some tasks) shows only on the servers. Each
server's `nv_inference_request_success` is read before and after the run (`--server-metrics`), and the
difference is written beside locust's CSVs as PREFIX_servers.json for `fleet report`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import requests
from pydantic import BaseModel

from model_repository.triton_admin import scrape

SUFFIX = "_servers.json"


class ServerCount(BaseModel):
    address: str
    requests: int
    seconds: float
    error: str | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def metrics_url(address: str) -> str:
    address = address.strip()
    if "://" not in address:
        address = f"http://{address}"
    return address if address.rstrip("/").endswith("/metrics") else address.rstrip("/") + "/metrics"


def successes(address: str, timeout_s: float = 5.0) -> int:
    """Sum of nv_inference_request_success over every model of one server."""
    return int(sum(scrape(metrics_url(address), timeout_s).model_successes.values()))


class Snapshot:
    """Counters of several servers at one moment; `since(earlier)` gives the per-server difference."""

    def __init__(self, addresses: list[str]) -> None:
        self.at = time.monotonic()
        self.values: dict[str, int | str] = {}
        for address in addresses:
            try:
                self.values[address] = successes(address)
            except requests.RequestException as error:
                self.values[address] = f"metrics unreachable: {error.__class__.__name__}"

    def since(self, earlier: Snapshot) -> list[ServerCount]:
        seconds = self.at - earlier.at
        out = []
        for address, value in self.values.items():
            before = earlier.values.get(address)
            if isinstance(value, int) and isinstance(before, int):
                out.append(ServerCount(address=address, requests=value - before, seconds=seconds))
            else:
                error = value if isinstance(value, str) else str(before)
                out.append(ServerCount(address=address, requests=0, seconds=seconds, error=error))
        return out


def path_for(csv_prefix: str | Path) -> Path:
    return Path(f"{csv_prefix}{SUFFIX}")


def write(csv_prefix: str | Path, counts: list[ServerCount]) -> Path:
    path = path_for(csv_prefix)
    path.write_text(json.dumps([c.model_dump() for c in counts], indent=1))
    return path


def read_beside(stats_csv: Path) -> list[ServerCount] | None:
    """The servers file of the run whose stats CSV is `stats_csv`, if it was written."""
    name = stats_csv.name
    if not name.endswith("_stats.csv"):
        return None
    path = stats_csv.with_name(name.removesuffix("_stats.csv") + SUFFIX)
    if not path.exists():
        return None
    return [ServerCount(**row) for row in json.loads(path.read_text())]
