"""One read of the fleet's state for the status page and the metrics collector, that never raises.

Each source is read on its own and guarded: when the database, S3 or a server is down, the snapshot
still comes back, with what failed in `problems` (shown on the page, exported as *_up gauges).
"""
from __future__ import annotations

import concurrent.futures
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from control_plane.db import Architecture, LoadTest, Model, ModelVersion, Pack, Placement, Server
from control_plane.pending import CATEGORIES, PendingReason, pending_reason, serves, serves_generation

log = logging.getLogger(__name__)
_CHECKS = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="observability-check")
S3_TIMEOUT_S = 2.0
PENDING_LISTED = 200
ARCHITECTURES_LISTED = 50  # on the page and as labelled gauges: bounded, whatever the registry holds
PENDING_REASONS = CATEGORIES  # fleet_models_pending{reason=...}: control_plane/pending.py words and counts them
SERVER_FIELDS = {"name", "family", "http_url", "grpc_url", "capacity_bytes", "healthy", "last_seen", "last_error",
                 "placed_packs", "repository_path"}


@dataclass
class ServerView:
    name: str
    family: str
    healthy: bool
    capacity_bytes: int
    placed_bytes: int
    last_error: str | None
    last_seen: Any
    packs: list[str]
    extra: dict[str, Any] = field(default_factory=dict)  # tier fields and whatever else the API adds

    @property
    def fill(self) -> float:
        return min(1.0, self.placed_bytes / self.capacity_bytes) if self.capacity_bytes else 0.0


@dataclass
class PackView:
    name: str
    family: str
    kind: str
    members: int
    generation: int
    built_generation: int
    placements: list[tuple[str, str, int, str | None]]  # server, state, loaded generation, error

    @property
    def replicas(self) -> int:
        return sum(state == "loaded" for _, state, _, _ in self.placements)


@dataclass
class ArchitectureView:
    id: str
    format: str
    members: int
    parameter_bytes: int
    program_bytes: int
    packs: int


@dataclass
class PendingModel:
    name: str
    pack: str | None
    reason: str
    detail: str


@dataclass
class Snapshot:
    problems: dict[str, str] = field(default_factory=dict)
    servers: list[ServerView] = field(default_factory=list)
    packs: list[PackView] = field(default_factory=list)
    models_by_status: dict[str, int] = field(default_factory=dict)
    pending_by_reason: dict[str, int] = field(default_factory=dict)
    pending: list[PendingModel] = field(default_factory=list)
    placements_by_state: dict[str, int] = field(default_factory=dict)
    loadtests_by_status: dict[str, int] = field(default_factory=dict)
    latest_loadtests: list[dict] = field(default_factory=list)
    architectures: list[ArchitectureView] = field(default_factory=list)  # most members first
    architecture_count: int = 0
    models_by_path: dict[str, int] = field(default_factory=dict)  # family (split) | whole (artifact)


def _read_registry(state, snap: Snapshot) -> None:
    from control_plane.views import server_out

    with state.sessions() as session:
        packs = {p.name: p for p in session.scalars(select(Pack).order_by(Pack.name))}
        placements = list(session.scalars(select(Placement)))
        servers = list(session.scalars(select(Server).order_by(Server.name)))
        by_name = {s.name: s for s in servers}
        by_pack: dict[str, list[Placement]] = {}
        for placement in placements:
            by_pack.setdefault(placement.pack, []).append(placement)
        served = {pack: [p for p in rows if serves(p, by_name.get(p.server))] for pack, rows in by_pack.items()}
        snap.placements_by_state = dict(Counter(p.state for p in placements))
        members: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        # A reason depends on the pack and the generation joined only: worded once per pair, not per model.
        worded: dict[tuple[str, int], PendingReason] = {}
        # Plain rows, not ORM objects: building 10,000 Model instances took most of a scrape.
        rows = session.execute(select(Model.name, Model.pack, Model.desired, Model.joined_generation)
                               .order_by(Model.name))
        for model in rows:
            pack_name = model.pack or ""
            members[pack_name] += 1
            if model.desired != "loaded":
                statuses["unloaded"] += 1
                continue
            if any(serves_generation(p, model.joined_generation) for p in served.get(pack_name, [])):
                statuses["servable"] += 1
                continue
            statuses["pending"] += 1
            key = (pack_name, model.joined_generation)
            if key not in worded:
                worded[key] = pending_reason(model.joined_generation, packs.get(pack_name),
                                             by_pack.get(pack_name, []), by_name)
            reason = worded[key]
            reasons[reason.category] += 1
            if len(snap.pending) < PENDING_LISTED:
                snap.pending.append(PendingModel(model.name, model.pack, reason.category, reason.text))
        snap.models_by_status, snap.pending_by_reason = dict(statuses), dict(reasons)
        snap.packs = [PackView(p.name, p.family, p.kind, members[p.name], p.generation, p.built_generation,
                               sorted((x.server, x.state, x.loaded_generation, x.error)
                                      for x in by_pack.get(p.name, [])))
                      for p in packs.values()]
        for server in servers:
            out = server_out(session, server)
            on_server = [p.pack for p in placements if p.server == server.name]
            snap.servers.append(ServerView(
                server.name, server.family, server.healthy, server.capacity_bytes,
                sum(p.reserved_bytes or 0 for p in placements if p.server == server.name),
                server.last_error, server.last_seen,
                sorted(on_server), {k: v for k, v in out.items() if k not in SERVER_FIELDS}))
        _read_architectures(session, snap)
        snap.loadtests_by_status = dict(Counter(session.scalars(select(LoadTest.status))))
        for test in session.scalars(select(LoadTest).order_by(LoadTest.id.desc()).limit(5)):
            snap.latest_loadtests.append({"id": test.id, "target": test.target, "status": test.status,
                                          "spec": test.spec, "results": test.results, "error": test.error,
                                          "created_at": test.created_at, "finished_at": test.finished_at})


def _read_architectures(session, snap: Snapshot) -> None:
    """Architecture families: members and packs per architecture (current versions), split vs whole."""
    current = (Model.name == ModelVersion.model) & (Model.current_version == ModelVersion.version)
    rows = session.execute(select(ModelVersion.architecture, Model.pack).join(Model, current)).all()
    members: Counter[str] = Counter()
    packs: dict[str, set] = {}
    for architecture, pack in rows:
        if architecture:
            members[architecture] += 1
            packs.setdefault(architecture, set()).add(pack)
    snap.models_by_path = {"family": sum(members.values()), "whole": len(rows) - sum(members.values())}
    known = {a.id: a for a in session.scalars(select(Architecture))}
    snap.architecture_count = len(known)
    for ident, count in members.most_common(ARCHITECTURES_LISTED):
        a = known.get(ident)
        if a is not None:
            snap.architectures.append(ArchitectureView(ident, a.format, count, a.parameter_bytes, a.program_bytes,
                                                       len(packs[ident] - {None})))


def _check_s3(state) -> str | None:
    future = _CHECKS.submit(state.s3.head_bucket, Bucket=state.settings.bucket)
    try:
        future.result(timeout=S3_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        return f"s3://{state.settings.bucket} did not answer within {S3_TIMEOUT_S:.0f} s"
    except Exception as error:  # noqa: BLE001
        return f"s3://{state.settings.bucket}: {str(error)[:300]}"
    return None


def take_snapshot(state, check_s3: bool = True) -> Snapshot:
    snap = Snapshot()
    try:
        _read_registry(state, snap)
    except Exception as error:  # noqa: BLE001  the page and /metrics must stay up
        log.warning("status snapshot: registry unavailable: %s", error)
        snap.problems["database"] = f"the registry database is unavailable: {str(error).splitlines()[0][:300]}"
    if check_s3:
        problem = _check_s3(state)
        if problem:
            snap.problems["object_store"] = problem
    reconciler = state.reconciler
    thread = getattr(reconciler, "_thread", None)
    if reconciler.last_tick_error:
        snap.problems["reconciler"] = f"the last reconcile tick failed: {reconciler.last_tick_error[:300]}"
    elif thread is not None and not thread.is_alive():
        snap.problems["reconciler"] = "the reconciler thread is not running"
    unhealthy = [s for s in snap.servers if not s.healthy]
    if unhealthy:
        snap.problems["servers"] = "unhealthy: " + ", ".join(
            f"{s.name} ({s.last_error or 'not ready'})" for s in unhealthy)
    return snap
