"""Retirement: unload surplus replicas, but only once every target replica of their pack serves its
generation. A pack with no target replica at all keeps its retiring ones serving, unless it has no members."""
from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from control_plane.db import AuditEntry, Pack, Placement, Server
from control_plane.reconcile.queries import member_bytes
from control_plane.reconcile.workers import AdminClients, Workers


class Retirements:
    name = "retirement"

    def __init__(self, sessions: sessionmaker, admin: AdminClients, workers: Workers, families: bool = False) -> None:
        self.sessions, self.admin, self.workers, self.families = sessions, admin, workers, families

    def update(self) -> None:
        with self.sessions() as session:
            retiring = session.execute(
                select(Placement.pack, Placement.server, Server.http_url, Server.healthy)
                .join(Server, Server.name == Placement.server).where(Placement.retiring.is_(True))).all()
            if not retiring:
                return
            packs = {r.pack for r in retiring}
            members = member_bytes(session, self.families)
            targets: dict[str, list[bool]] = defaultdict(list)
            rows = session.execute(select(Placement.pack, Placement.state, Placement.loaded_generation,
                                          Pack.built_generation).join(Pack, Pack.name == Placement.pack)
                                   .where(Placement.pack.in_(packs), Placement.retiring.is_(False)))
            for pack, state, loaded, built in rows:
                targets[pack].append(state == "loaded" and loaded >= built)
        ready = [r for r in retiring if not members.get(r.pack) or (targets[r.pack] and all(targets[r.pack]))]
        by_server: dict[str, list] = defaultdict(list)
        for row in ready:
            by_server[row.server].append(row)
        self.workers.each(lambda rows: [self._unload(r) for r in rows], by_server.values())

    def _unload(self, row) -> None:
        error = self.admin.at(row.http_url).unload(row.pack).error if row.healthy else None
        with self.sessions.begin() as session:
            placement = session.get(Placement, (row.pack, row.server))
            if placement is None or not placement.retiring:
                return
            if error is None:
                session.delete(placement)
            else:
                placement.error = error
            session.add(AuditEntry(action="pack.unload", subject=row.pack,
                                   detail={"server": row.server, "error": error}))
