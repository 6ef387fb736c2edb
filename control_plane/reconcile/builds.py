"""Builds: packs whose membership changed are built into S3 with their generation and residency budget in
their config parameters, and the repository index is published (control_plane/repository.py). Until it
succeeded once, an empty index is published where the prefix has none (`EmptyIndex`)."""
from __future__ import annotations

import logging
from dataclasses import replace

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from control_plane.db import Pack
from control_plane.placement import residency_budget
from control_plane.reconcile.queries import member_bytes, working_sets
from control_plane.repository import RepositoryBuilder
from control_plane.traffic import TrafficMeter

log = logging.getLogger(__name__)


class EmptyIndex:
    """Until it succeeded once: an empty repository index where there is none, so servers deployed before any
    model is registered sync an empty repository and become Ready (docs/eks.md, step 7). An S3 failure is
    logged and retried next tick; the rest of the tick still runs."""

    name = "empty_index"

    def __init__(self, builder: RepositoryBuilder) -> None:
        self.builder = builder
        self.done = False

    def update(self) -> None:
        if self.done:
            return
        try:
            self.builder.ensure_index()
            self.done = True
        except (ClientError, BotoCoreError) as error:
            log.error("cannot publish the empty repository index to %s: %s", self.builder.location, error)


class PackBuilds:
    """Builds every pack whose generation is ahead of what was built, then publishes them together."""

    name = "builds"

    def __init__(self, sessions: sessionmaker, builder: RepositoryBuilder, traffic: TrafficMeter) -> None:
        self.sessions, self.builder, self.traffic = sessions, builder, traffic

    def update(self) -> None:
        # A read-only session: building writes files, not rows, and a write transaction held through a build
        # of a 1,000-member pack would block every registration (SQLite has one writer).
        with self.sessions() as session:
            stale = list(session.scalars(select(Pack).where(Pack.generation > Pack.built_generation)))
            if not stale:
                return
            working = working_sets(member_bytes(session, self.builder.pack_settings.families), self.traffic)
            built = {}
            for pack in stale:
                # The pack's own config carries its generation (read back after each load) and a residency
                # budget sized to its working set; a server's placement may override the latter on load.
                budget = residency_budget(working.get(pack.name, 0)) or self.builder.pack_settings.max_resident_bytes
                settings = replace(self.builder.pack_settings, generation=pack.generation,
                                   max_resident_bytes=budget)
                built[pack.name] = (pack.generation, self.builder.build(session, pack, settings))
        self.builder.publish()
        with self.sessions.begin() as session:
            for name, (generation, _members) in built.items():
                pack = session.get(Pack, name)
                if pack is not None:
                    pack.built_generation = generation
