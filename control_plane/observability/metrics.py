"""Control-plane Prometheus metrics: registry state read at scrape time, plus a few counted events.

Why a custom Collector for the state: models, packs, placements and servers live in the registry and are
rewritten by several parts of the control plane; reading them when Prometheus scrapes needs no hooks in
that code and is never stale. Events that leave no row behind (a registration refused, how long a tick,
a sync or a load took) are counted where they happen through the small functions at the end of this file.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from control_plane.observability.snapshot import PENDING_REASONS, Snapshot, take_snapshot

log = logging.getLogger(__name__)
disable_created_metrics()  # *_created samples only add noise to every counter and histogram

# ---- events, counted where they happen (process-wide: one control plane per process) -------------------
REGISTRATIONS = Counter("fleet_registrations", "Model registrations by outcome (created, unchanged, rejected, "
                        "failed) and error code", ["outcome", "code"])
TICK_SECONDS = Histogram("fleet_reconcile_tick_seconds", "Duration of one reconciler tick",
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
TICK_FAILURES = Counter("fleet_reconcile_tick_failures", "Reconciler ticks that raised")
SYNCS = Counter("fleet_syncs", "Repository syncs to a server by outcome (ok, failed)", ["outcome"])
SYNC_SECONDS = Histogram("fleet_sync_seconds", "Duration of one repository sync to a server",
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
LOADS = Counter("fleet_pack_loads", "Pack loads and unloads on a server by action and outcome (ok, failed)",
                ["action", "outcome"])
LOAD_SECONDS = Histogram("fleet_pack_load_seconds", "Duration of one pack load or unload call", ["action"],
                         buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
HTTP_REQUESTS = Counter("fleet_http_requests", "Control-plane HTTP requests by endpoint and status class",
                        ["method", "endpoint", "status"])
HTTP_SECONDS = Histogram("fleet_http_request_seconds", "Control-plane HTTP request duration", ["endpoint"])

# Zero-valued series exist from the start, so rate() and alarms see 0 rather than "no data".
for _outcome in ("ok", "failed"):
    SYNCS.labels(_outcome)
    for _action in ("load", "unload"):
        LOADS.labels(_action, _outcome)
for _outcome in ("created", "unchanged"):
    REGISTRATIONS.labels(_outcome, "none")
for _action in ("load", "unload"):
    LOAD_SECONDS.labels(_action)


@contextmanager
def timed_tick() -> Iterator[None]:
    """Around one reconciler tick: its duration, and a failure if it raises."""
    started = time.monotonic()
    try:
        yield
    except Exception:
        TICK_FAILURES.inc()
        raise
    finally:
        TICK_SECONDS.observe(time.monotonic() - started)


@contextmanager
def timed_sync() -> Iterator[None]:
    """Around one repository sync: ok unless it raises."""
    started = time.monotonic()
    try:
        yield
    except Exception:
        SYNCS.labels("failed").inc()
        raise
    else:
        SYNCS.labels("ok").inc()
    finally:
        SYNC_SECONDS.observe(time.monotonic() - started)


def record_load(action: str, seconds: float, error: str | None) -> None:
    """One pack load/unload call on a server: how long it took, whether Triton accepted it."""
    LOADS.labels(action, "ok" if error is None else "failed").inc()
    LOAD_SECONDS.labels(action).observe(seconds)


def record_registration(status: int, code: str | None) -> None:
    """A finished registration request (POST /api/v1/models, /from-s3) by its HTTP status."""
    if status == 201:
        REGISTRATIONS.labels("created", "none").inc()
    elif status == 200:
        REGISTRATIONS.labels("unchanged", "none").inc()
    else:
        REGISTRATIONS.labels("rejected" if status < 500 else "failed", code or "unknown").inc()


# ---- state, read from the registry at scrape time -----------------------------------------------------
class FleetCollector(Collector):
    """Yields the fleet's state as gauges. Never raises: a database that is down reads as
    fleet_registry_up 0 (and no state gauges), so /metrics stays up and alarms can fire on it."""

    def __init__(self, snapshot: Callable[[], Snapshot], leader: Callable[[], bool]):
        self.snapshot, self.leader = snapshot, leader

    def collect(self):  # noqa: C901  one flat list of families is easier to read than helpers
        try:
            leader = 1.0 if self.leader() else 0.0
        except Exception:  # noqa: BLE001
            leader = 0.0
        yield GaugeMetricFamily("fleet_control_plane_leader",
                                "1 if this control plane is the leader (always 1 without leader election)",
                                value=leader)
        snap = self.snapshot()
        yield GaugeMetricFamily("fleet_registry_up", "1 if the registry database answered this scrape",
                                value=0.0 if snap.problems.get("database") else 1.0)
        yield GaugeMetricFamily("fleet_object_store_up", "1 if the S3 bucket answered this scrape",
                                value=0.0 if snap.problems.get("object_store") else 1.0)
        yield GaugeMetricFamily("fleet_reconciler_healthy", "1 if the reconciler's last tick succeeded",
                                value=0.0 if snap.problems.get("reconciler") else 1.0)
        if snap.problems.get("database"):
            return
        models = GaugeMetricFamily("fleet_models", "Registered models by status", labels=["status"])
        for status in ("servable", "pending", "unloaded"):
            models.add_metric([status], snap.models_by_status.get(status, 0))
        yield models
        pending = GaugeMetricFamily("fleet_models_pending", "Pending models by why they are not servable yet",
                                    labels=["reason"])
        for reason in PENDING_REASONS:
            pending.add_metric([reason], snap.pending_by_reason.get(reason, 0))
        yield pending
        placements = GaugeMetricFamily("fleet_placements", "Pack placements by state", labels=["state"])
        for state in ("pending", "loaded", "failed"):
            placements.add_metric([state], snap.placements_by_state.get(state, 0))
        yield placements
        replicas = GaugeMetricFamily("fleet_pack_replicas", "Servers that have a pack loaded", labels=["pack"])
        for pack in snap.packs:
            replicas.add_metric([pack.name], pack.replicas)
        yield replicas
        yield GaugeMetricFamily("fleet_packs", "Packs in the registry", value=len(snap.packs))
        yield GaugeMetricFamily("fleet_architectures", "Architecture families (one program each, shared by its "
                                "members)", value=snap.architecture_count)
        paths = GaugeMetricFamily("fleet_models_by_path", "Registered models by how they are served: family "
                                  "(program plus weights) or whole (artifact)", labels=["path"])
        for path in ("family", "whole"):
            paths.add_metric([path], snap.models_by_path.get(path, 0))
        yield paths
        family_members = GaugeMetricFamily("fleet_architecture_members", "Members of an architecture (the 50 "
                                           "largest families)", labels=["architecture", "format"])
        for a in snap.architectures:
            family_members.add_metric([a.id[:16], a.format], a.members)
        yield family_members
        servers = GaugeMetricFamily("fleet_servers", "Registered Triton servers by health", labels=["health"])
        servers.add_metric(["healthy"], sum(s.healthy for s in snap.servers))
        servers.add_metric(["unhealthy"], sum(not s.healthy for s in snap.servers))
        yield servers
        capacity = GaugeMetricFamily("fleet_server_capacity_bytes", "Memory a server offers to packs",
                                     labels=["server"])
        placed = GaugeMetricFamily("fleet_server_placed_bytes", "Estimated bytes of the packs placed on a server",
                                   labels=["server"])
        for server in snap.servers:
            capacity.add_metric([server.name], server.capacity_bytes)
            placed.add_metric([server.name], server.placed_bytes)
        yield capacity
        yield placed
        yield from tier_families(snap)
        loadtests = GaugeMetricFamily("fleet_loadtests", "Load-test runs by status", labels=["status"])
        for status in ("pending", "running", "succeeded", "failed"):
            loadtests.add_metric([status], snap.loadtests_by_status.get(status, 0))
        yield loadtests


# Per server and tier, from servers.tier_usage (host, gpu, neuron from the Triton scrape; disk from the sync).
# The counters are exported as gauges of the last reading, not as counters: host and device tiers count since
# each stub started and lose an unloaded pack's share, so the sum can fall; Prometheus' rate() would read a
# fall as a reset. Use delta()/deriv() over them, or the server's own fleet_tier_*_total counters.
TIER_GAUGES = (
    ("resident_bytes", "fleet_server_tier_resident_bytes", "Bytes resident in a server's tier"),
    ("resident_members", "fleet_server_tier_resident_members", "Members resident in a server's tier (disk: packs)"),
    ("budget_bytes", "fleet_server_tier_budget_bytes", "A server's tier budget (disk -1: whole repository synced)"),
    ("hits", "fleet_server_tier_hits", "Hits of a server's tier, last reading (disk: packs found complete)"),
    ("misses", "fleet_server_tier_misses", "Misses of a server's tier, last reading (disk: packs downloaded)"),
    ("evictions", "fleet_server_tier_evictions", "Evictions from a server's tier, last reading"),
    ("loads", "fleet_server_tier_loads", "Loads into a server's tier, last reading (disk: packs downloaded)"),
    ("load_seconds", "fleet_server_tier_load_seconds", "Seconds spent filling a server's tier, last reading"),
)


def tier_families(snap: Snapshot) -> Iterator[GaugeMetricFamily]:
    """fleet_server_tier_*{server, tier}: what each tier of each server held at its last reading."""
    families = {key: GaugeMetricFamily(name, text, labels=["server", "tier"]) for key, name, text in TIER_GAUGES}
    for server in snap.servers:
        usage = server.extra.get("tier_usage") or {}
        for tier, state in sorted((usage.get("tiers") or {}).items()):
            for key, family in families.items():
                value = state.get(key) if isinstance(state, dict) else None
                if isinstance(value, int | float):
                    family.add_metric([server.name, tier], float(value))
    yield from families.values()


def leader_of(state) -> Callable[[], bool]:
    """Whether this replica leads the reconciler (control_plane/leader.py); 1 without leader election."""
    def read() -> bool:
        leadership = getattr(state, "leadership", None)
        return True if leadership is None else bool(leadership.is_leader())
    return read


def make_registry(state) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(lambda: take_snapshot(state), leader_of(state)))
    return registry


def exposition(app_registry: CollectorRegistry) -> bytes:
    """The scrape body: this app's state plus the process-wide events and process/GC metrics."""
    return generate_latest(REGISTRY) + generate_latest(app_registry)
