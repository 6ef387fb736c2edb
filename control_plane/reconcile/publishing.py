"""Assignments: tell each server whose placements changed which packs (and generations) it should hold, in
S3 (control_plane/assignments.py), where its sync sidecar reads them."""
from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from control_plane.assignments import publish_assignment
from control_plane.db import Pack, Placement, Server
from control_plane.reconcile.workers import Workers
from control_plane.settings import Settings

log = logging.getLogger(__name__)


class AssignmentPublisher:
    """Publishes a healthy server's assignment when it differs from the one last published to it."""

    name = "assignments"

    def __init__(self, sessions: sessionmaker, settings: Settings, s3, workers: Workers,
                 publish: Callable[..., None] = publish_assignment) -> None:
        self.sessions, self.settings, self.s3, self.workers = sessions, settings, s3, workers
        self.publish = publish  # (s3, settings, server, {pack: generation}); a benchmark counts the calls
        self._published: dict[str, dict[str, int]] = {}

    def forget(self, servers: list[str]) -> None:
        """Servers that died or left: their share is published again when they come back."""
        for server in servers:
            self._published.pop(server, None)

    def update(self) -> None:
        with self.sessions() as session:
            rows = session.execute(select(Placement.server, Placement.pack, Pack.built_generation)
                                   .join(Pack, Pack.name == Placement.pack)
                                   .join(Server, Server.name == Placement.server)
                                   .where(Server.healthy.is_(True), Pack.built_generation >= 0)).all()
            names = list(session.scalars(select(Server.name).where(Server.healthy.is_(True))))
        wanted: dict[str, dict[str, int]] = {name: {} for name in names}
        for server, pack, generation in rows:
            wanted[server][pack] = generation
        changed = [(s, packs) for s, packs in wanted.items() if self._published.get(s) != packs]

        def publish(item: tuple[str, dict[str, int]]) -> None:
            server, packs = item
            try:
                self.publish(self.s3, self.settings, server, packs)
                self._published[server] = packs
            except Exception as error:  # noqa: BLE001  retried next tick; loads wait on the sync anyway
                log.error("publishing %s's assignment failed: %s", server, error)
        self.workers.each(publish, changed)
