"""Brings the fleet to the declared state, one step per tick, in one background thread.

Each tick: check server health; build and publish packs whose membership changed; place packs that have
no healthy server (by family and free memory); sync and (re)load placements that are behind. Loads run
one at a time per pack by construction (a single reconciler thread per control plane), so two loads of
the same pack never race. A server that stops answering for `server_dead_after_s` loses its placements,
and the next tick places those packs elsewhere.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db import AuditEntry, Model, ModelVersion, Pack, Placement, Server
from control_plane.repository import RepositoryBuilder
from control_plane.settings import Settings
from fleet.triton_server import ADMIN_HEADER
from model_repository.s3_sync import sync

log = logging.getLogger(__name__)
STUB_BASE_BYTES = 250 * 2**20  # a pack's stub with torch imported, measured 150-220 MB PSS
MEMBER_OVERHEAD = 3  # resident tensors plus TorchScript graph per artifact byte


class Reconciler:
    def __init__(self, sessions: sessionmaker, settings: Settings, builder: RepositoryBuilder):
        self.sessions, self.settings, self.builder = sessions, settings, builder
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.http = requests.Session()
        self.last_tick_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=30)

    def nudge(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
                self.last_tick_error = None
            except Exception as error:  # noqa: BLE001  the loop must survive anything and retry
                self.last_tick_error = str(error)
                log.exception("reconcile tick failed; retrying")
            self._wake.wait(self.settings.reconcile_interval_s)
            self._wake.clear()

    def tick(self) -> None:
        self.check_health()
        self.build_changed_packs()
        self.place_packs()
        self.load_placements()

    # ---- health --------------------------------------------------------------------------------
    def _ready(self, server: Server) -> str | None:
        try:
            response = self.http.get(f"{server.http_url}/v2/health/ready", timeout=1.0)
            return None if response.status_code == 200 else f"not ready (HTTP {response.status_code})"
        except requests.RequestException as error:
            return f"unreachable: {type(error).__name__}"

    def check_health(self) -> None:
        now = datetime.now(UTC)
        with self.sessions.begin() as session:
            for server in session.scalars(select(Server)):
                problem = self._ready(server)
                if problem is None:
                    if not server.healthy:
                        session.add(AuditEntry(action="server.recovered", subject=server.name))
                    server.healthy, server.last_seen, server.last_error = True, now, None
                    continue
                server.last_error = problem
                last_seen = server.last_seen.replace(tzinfo=UTC) if server.last_seen and \
                    server.last_seen.tzinfo is None else server.last_seen
                if server.healthy and (last_seen is None or
                                       (now - last_seen).total_seconds() > self.settings.server_dead_after_s):
                    server.healthy = False
                    moved = session.execute(Placement.__table__.delete().where(Placement.server == server.name))
                    session.add(AuditEntry(action="server.dead", subject=server.name,
                                           detail={"reason": problem, "placements_dropped": moved.rowcount}))
                    log.warning("server %s is dead (%s); its packs will be re-placed", server.name, problem)

    # ---- build ---------------------------------------------------------------------------------
    def build_changed_packs(self) -> None:
        with self.sessions.begin() as session:
            stale = list(session.scalars(select(Pack).where(Pack.generation > Pack.built_generation)))
            if not stale:
                return
            built = {}
            for pack in stale:
                built[pack.name] = (pack.generation, self.builder.build(session, pack))
        self.builder.publish()
        with self.sessions.begin() as session:
            for name, (generation, members) in built.items():
                pack = session.get(Pack, name)
                if pack is not None:
                    pack.built_generation = generation
                    if members == 0:
                        session.execute(Placement.__table__.update().where(Placement.pack == name)
                                        .values(state="pending", loaded_generation=-1))

    # ---- placement -----------------------------------------------------------------------------
    @staticmethod
    def pack_bytes(session: Session, pack: str) -> int:
        member_bytes = session.scalar(
            select(func.coalesce(func.sum(ModelVersion.bytes), 0))
            .join(Model, (Model.name == ModelVersion.model) & (Model.current_version == ModelVersion.version))
            .where(Model.pack == pack, Model.desired == "loaded")) or 0
        return STUB_BASE_BYTES + MEMBER_OVERHEAD * int(member_bytes)

    def place_packs(self) -> None:
        with self.sessions.begin() as session:
            servers = list(session.scalars(select(Server).where(Server.healthy.is_(True))))
            used = {s.name: 0 for s in servers}
            for placement in session.scalars(select(Placement)):
                if placement.server in used:
                    used[placement.server] += self.pack_bytes(session, placement.pack)
            placed = set(session.scalars(select(Placement.pack)))
            for pack in session.scalars(select(Pack).where(Pack.built_generation >= 0).order_by(Pack.name)):
                if pack.name in placed or not self._has_members(session, pack.name):
                    continue
                need = self.pack_bytes(session, pack.name)
                candidates = [s for s in servers if s.family == pack.family
                              and s.capacity_bytes - used[s.name] >= need]
                if not candidates:
                    continue  # stays pending; GET /models/{id} reports it
                best = max(candidates, key=lambda s: s.capacity_bytes - used[s.name])
                used[best.name] += need
                session.add(Placement(pack=pack.name, server=best.name, state="pending"))
                session.add(AuditEntry(action="pack.place", subject=pack.name, detail={"server": best.name}))

    @staticmethod
    def _has_members(session: Session, pack: str) -> bool:
        return bool(session.scalar(select(func.count()).select_from(Model)
                                   .where(Model.pack == pack, Model.desired == "loaded")))

    # ---- load ----------------------------------------------------------------------------------
    def load_placements(self) -> None:
        with self.sessions() as session:
            work = session.execute(
                select(Placement, Pack, Server).join(Pack, Pack.name == Placement.pack)
                .join(Server, Server.name == Placement.server)
                .where(Server.healthy.is_(True), Placement.loaded_generation < Pack.built_generation)).all()
            work = [(p.pack, p.server, pack.built_generation, s.http_url, s.repository_path,
                     self._has_members(session, p.pack)) for p, pack, s in work]
        synced: set[str] = set()
        for pack, server, generation, http_url, repository_path, has_members in work:
            if repository_path and server not in synced:
                report = sync(self.settings.repository_uri, repository_path, self.builder.registry.s3)
                synced.add(server)
                if report.refused:
                    log.error("sync to %s refused %s", server, report.refused)
            action = "load" if has_members else "unload"
            error = self._repository_call(http_url, pack, action)
            with self.sessions.begin() as session:
                placement = session.get(Placement, (pack, server))
                if placement is None:
                    continue
                if error is None and has_members:
                    placement.state, placement.loaded_generation, placement.error = "loaded", generation, None
                elif error is None:
                    session.delete(placement)
                else:
                    placement.state, placement.error = "failed", error
                session.add(AuditEntry(action=f"pack.{action}", subject=pack,
                                       detail={"server": server, "generation": generation, "error": error}))

    def _repository_call(self, http_url: str, pack: str, action: str) -> str | None:
        headers = {ADMIN_HEADER: self.settings.triton_admin_key} if self.settings.triton_admin_key else {}
        try:
            response = self.http.post(f"{http_url}/v2/repository/models/{pack}/{action}", headers=headers,
                                      timeout=300)
        except requests.RequestException as error:
            return f"{action} failed: server unreachable ({type(error).__name__})"
        if response.status_code == 200:
            return None
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text
        return f"{action} failed (HTTP {response.status_code}): {detail[:500]}"


def wait_until(predicate, timeout_s: float, interval_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
