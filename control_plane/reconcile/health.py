"""Server health: which servers are alive, on its own thread and cadence.

A server that stops answering for `server_dead_after_s` is declared dead and loses its placements; the
next tick places those packs elsewhere. Liveness, not readiness: with strict readiness Triton answers
"not ready" while any model loads, and the health thread runs during loads (a pack of 300 members takes
~8 s to load here), so readiness would declare a busy server dead. A server that accepts the connection
but does not answer in time is what a busy server on a loaded machine does (three servers loading packs
on two cores missed 1 s answers for seconds and were declared dead, dropping live replicas), so it gets
the longer `server_slow_dead_after_s`; a killed one refuses the connection at once.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from control_plane.db import AuditEntry, Placement, Server
from control_plane.reconcile.workers import AdminClients, Workers
from control_plane.settings import Settings
from model_repository.triton_admin import Liveness

log = logging.getLogger(__name__)


class ServerHealth:
    """Marks servers healthy or dead; `on_dead` hears of each server declared dead (its placements are
    already dropped), so other managers forget what they knew of it."""

    name = "health"

    def __init__(self, sessions: sessionmaker, settings: Settings, admin: AdminClients, workers: Workers,
                 on_dead: Callable[[list[str]], None] = lambda dead: None) -> None:
        self.sessions, self.settings, self.admin, self.workers = sessions, settings, admin, workers
        self.on_dead = on_dead

    def _live(self, http_url: str) -> Liveness:
        return self.admin.at(http_url).live(timeout_s=max(1.0, self.settings.server_dead_after_s))

    def update(self) -> None:
        with self.sessions() as session:
            targets = [(s.name, s.http_url) for s in session.scalars(select(Server))]
        verdicts = dict(zip([n for n, _ in targets],
                            self.workers.each(lambda t: self._live(t[1]), targets), strict=True))
        now = datetime.now(UTC)
        dead = []
        with self.sessions.begin() as session:
            for server in session.scalars(select(Server)):
                if server.name not in verdicts:
                    continue
                verdict = verdicts[server.name]
                if verdict.alive:
                    if not server.healthy:
                        session.add(AuditEntry(action="server.recovered", subject=server.name))
                    server.healthy, server.last_seen, server.last_error = True, now, None
                    continue
                server.last_error = verdict.problem
                last_seen = server.last_seen.replace(tzinfo=UTC) if server.last_seen and \
                    server.last_seen.tzinfo is None else server.last_seen
                window = self.settings.server_slow_dead_after_s if verdict.slow else self.settings.server_dead_after_s
                if server.healthy and (last_seen is None or (now - last_seen).total_seconds() > window):
                    server.healthy = False
                    moved = session.execute(Placement.__table__.delete().where(Placement.server == server.name))
                    session.add(AuditEntry(action="server.dead", subject=server.name,
                                           detail={"reason": verdict.problem, "placements_dropped": moved.rowcount}))
                    log.warning("server %s is dead (%s); its packs will be re-placed", server.name, verdict.problem)
                    dead.append(server.name)
        if dead:
            self.on_dead(dead)
