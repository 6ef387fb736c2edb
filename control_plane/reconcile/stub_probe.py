"""The stub probe: reload loaded packs whose stub no longer answers (killed, crashed) or that the server
lost.

Triton's model readiness stays 200 after a Python-backend stub dies, so readiness cannot tell; a request
for model_repository.contract.PROBE_MEMBER reaches the stub and is refused by the pack runtime itself
(ErrorCode.UNKNOWN_MEMBER), without running any model (model_repository.triton_admin `TritonAdmin.probe`).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from control_plane.db import AuditEntry, Placement, Server
from control_plane.reconcile.queries import one_signature_per_pack
from control_plane.reconcile.workers import AdminClients, Workers
from control_plane.settings import Settings

log = logging.getLogger(__name__)


class StubProbe:
    """Every `stub_probe_interval_s` (0: never), probes each loaded pack on each healthy server; a pack
    whose stub does not answer is unloaded and its placement set back to pending, so loading reloads it."""

    name = "stub_probe"

    def __init__(self, sessions: sessionmaker, settings: Settings, admin: AdminClients, workers: Workers) -> None:
        self.sessions, self.settings, self.admin, self.workers = sessions, settings, admin, workers
        self._last = float("-inf")

    def update(self) -> None:
        interval = self.settings.stub_probe_interval_s
        if interval <= 0 or time.monotonic() - self._last < interval:
            return
        self._last = time.monotonic()
        with self.sessions() as session:
            rows = session.execute(select(Placement.pack, Server.name, Server.http_url)
                                   .join(Server, Server.name == Placement.server)
                                   .where(Server.healthy.is_(True), Placement.state == "loaded")).all()
            signatures = one_signature_per_pack(session, {pack for pack, _, _ in rows})
        work = [(pack, server, url, signatures[pack]) for pack, server, url in rows if pack in signatures]
        by_server: dict[str, list] = defaultdict(list)
        for item in work:
            by_server[item[1]].append(item)
        self.workers.each(lambda items: [self._probe_one(*item) for item in items], by_server.values())

    def _probe_one(self, pack: str, server: str, http_url: str, inputs: list[dict]) -> None:
        triton = self.admin.at(http_url)
        problem = triton.probe(pack, inputs).problem
        if problem is None:
            return
        # A load of an unchanged model is a no-op in Triton, so the dead instance is unloaded first.
        if triton.unload(pack).ok:
            triton.wait_unloaded(pack)
        with self.sessions.begin() as session:
            placement = session.get(Placement, (pack, server))
            if placement is None or placement.state != "loaded":
                return
            placement.state, placement.loaded_generation = "pending", -1
            placement.error = f"stub probe failed, reloading: {problem}"
            session.add(AuditEntry(action="pack.unhealthy", subject=pack,
                                   detail={"server": server, "reason": problem}))
        log.warning("pack %s on %s failed its stub probe (%s); reloading it", pack, server, problem)
