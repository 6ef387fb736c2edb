"""Loading: sync local servers from S3, load what is behind its pack's generation, verify it
(control_plane/reconcile/verify.py), and reload loaded packs whose budgets are far from what their
reservation now allows (needs_resize), with a config override.

Work for different servers runs on the workers; one server's loads run in order, so two loads of the same
pack on the same server never race. Outcomes are written in small batches (every RECORD_EVERY_S or
RECORD_BATCH loads): one commit per load cost more than the load of a small pack at 2,000 packs.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import aliased, sessionmaker

from control_plane.capacity import device_bytes
from control_plane.db import AuditEntry, Pack, Placement, Server
from control_plane.observability import metrics
from control_plane.pending import sync_problem
from control_plane.placement import device_budget, needs_resize, residency_budget
from control_plane.reconcile.verify import LoadResult, load_and_verify, resize
from control_plane.reconcile.workers import AdminClients, Workers
from control_plane.settings import Settings
from model_repository.s3_sync import SyncError, sync

log = logging.getLogger(__name__)
RECORD_BATCH, RECORD_EVERY_S = 50, 1.0
Outcome = tuple[str, LoadResult | None, str | None, int, str]  # pack, result, error, generation, audit action


def _device_budget(row) -> int | None:
    """The device tier budget of a placement row (server family, GPU budget, instance type, reservations)."""
    return device_budget(device_bytes(row.family, row.gpu_budget_bytes, row.instance_type), row.reserved_bytes,
                         row.server_reserved)


class Loads:
    """`on_disk_status(server, status)` hears each local server's disk tier, straight from its sync."""

    name = "loading"

    def __init__(self, sessions: sessionmaker, settings: Settings, s3, admin: AdminClients, workers: Workers,
                 on_disk_status: Callable[[str, dict], None] = lambda server, status: None) -> None:
        self.sessions, self.settings, self.s3, self.admin, self.workers = sessions, settings, s3, admin, workers
        self.on_disk_status = on_disk_status

    def update(self) -> None:
        others = aliased(Placement)
        server_reserved = (select(func.coalesce(func.sum(others.reserved_bytes), 0))
                           .where(others.server == Placement.server).scalar_subquery())
        with self.sessions() as session:
            rows = session.execute(
                select(Placement.pack, Placement.server, Placement.reserved_bytes, Placement.residency_bytes,
                       Placement.device_bytes, Placement.state, Placement.loaded_generation, Pack.built_generation,
                       Server.http_url, Server.repository_path, Server.family, Server.gpu_budget_bytes,
                       Server.instance_type, Server.disk_budget_bytes, server_reserved.label("server_reserved"))
                .join(Pack, Pack.name == Placement.pack).join(Server, Server.name == Placement.server)
                .where(Server.healthy.is_(True), Placement.retiring.is_(False), Pack.built_generation >= 0)).all()
        by_server: dict[str, list] = defaultdict(list)
        for row in rows:
            behind = row.state != "loaded" or row.loaded_generation < row.built_generation
            device = _device_budget(row)
            if (behind or needs_resize(row.residency_bytes, residency_budget(row.reserved_bytes))
                    or (device and (row.device_bytes <= 0 or needs_resize(row.device_bytes, device)))):
                by_server[row.server].append(row)
        self.workers.each(self._load_server, by_server.values())

    def _load_server(self, rows: list) -> None:
        """Sync one server (local servers) and load its packs that are behind, in order."""
        server, repository_path = rows[0].server, rows[0].repository_path
        problems = self._sync_server(server, repository_path, rows[0].disk_budget_bytes) if repository_path else {}
        triton = self.admin.at(rows[0].http_url)
        outcomes: list[Outcome] = []
        flushed = time.monotonic()
        for row in sorted(rows, key=lambda r: r.pack):
            problem = problems.get(row.pack) or problems.get("*")
            if problem:
                # The server keeps its last good copy of the pack (sync never half-applies a model), so the
                # placement keeps its state and generation; the next tick tries again.
                outcomes.append((row.pack, None, problem, row.built_generation, "pack.sync_failed"))
            elif row.state == "loaded" and row.loaded_generation >= row.built_generation:
                result = resize(triton, row.pack, row.built_generation, residency_budget(row.reserved_bytes),
                                _device_budget(row))
                outcomes.append((row.pack, result, result.error, row.built_generation, "pack.resize"))
            else:
                started = time.monotonic()
                result = load_and_verify(triton, row.pack, row.built_generation,
                                         residency_budget(row.reserved_bytes), _device_budget(row))
                metrics.record_load("load", time.monotonic() - started, result.error)
                outcomes.append((row.pack, result, result.error, row.built_generation, "pack.load"))
            if len(outcomes) >= RECORD_BATCH or time.monotonic() - flushed > RECORD_EVERY_S:
                self._record(server, outcomes)
                outcomes, flushed = [], time.monotonic()
        self._record(server, outcomes)

    def _record(self, server: str, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        with self.sessions.begin() as session:
            for pack, result, error, generation, action in outcomes:
                placement = session.get(Placement, (pack, server))
                if placement is None:
                    continue
                changed = placement.error != error or (result is not None and placement.state != result.state)
                if result is not None:
                    placement.state = result.state
                    if result.state != "failed":  # what the server was read back to serve, maybe an older one
                        placement.loaded_generation = result.generation
                        placement.residency_bytes = max(result.residency_bytes, 0)
                        placement.device_bytes = max(result.device_bytes, 0)
                placement.error = error
                if changed:
                    session.add(AuditEntry(action=action, subject=pack, detail={
                        "server": server, "generation": generation, "state": result and result.state,
                        "error": error}))

    def _sync_server(self, server: str, repository_path: str, disk_budget_bytes: int | None = None) -> dict[str, str]:
        """Sync one server's repository from S3, within its disk budget (None: free disk less a reserve);
        returns, per pack ("*": all), why it could not be updated."""
        try:
            with metrics.timed_sync():
                report = sync(self.settings.repository_uri, repository_path, self.s3,
                              server=server, disk_budget_bytes=disk_budget_bytes)
        except SyncError as error:
            log.error("sync to %s failed: %s", server, error)
            return {"*": sync_problem("failed", str(error))}
        if report.status is not None:  # the disk tier, straight from the sync: no S3 round trip
            self.on_disk_status(server, report.status)
        problems: dict[str, list[str]] = {}
        for path, reason in report.refused.items():
            problems.setdefault(path.split("/", 1)[0], []).append(f"{path}: {reason}")
        if problems:
            log.error("sync to %s refused %s", server, report.refused)
        return {pack: sync_problem("refused", "; ".join(reasons)[:1000]) for pack, reasons in problems.items()}
