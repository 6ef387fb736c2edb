"""Brings the fleet to the declared state, one step per tick, in one background thread.

Each tick: check server health; probe loaded packs' stubs; build and publish packs whose membership
changed; place packs that have no healthy server (by family and free memory); sync and (re)load
placements that are behind. Loads run one at a time per pack by construction (a single reconciler thread
per control plane), so two loads of the same pack never race. A server that stops answering for
`server_dead_after_s` loses its placements, and the next tick places those packs elsewhere. A pack whose
stub process died (Triton keeps reporting it ready but answers every request with "Stub process ... is
not healthy") or that its server no longer has loaded fails the stub probe, and is unloaded and loaded
again in place.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from datetime import UTC, datetime

import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db import AuditEntry, Model, ModelVersion, Pack, Placement, Server
from control_plane.leader import AlwaysLeader, Leadership, adopt_published_packs
from control_plane.repository import RepositoryBuilder
from control_plane.settings import Settings
from fleet.triton_server import ADMIN_HEADER
from model_repository.s3_sync import SyncError, sync

log = logging.getLogger(__name__)
STUB_BASE_BYTES = 250 * 2**20  # a pack's stub with torch imported, measured 150-220 MB PSS
MEMBER_OVERHEAD = 3  # resident tensors plus TorchScript graph per artifact byte
# The stub probe names a member no pack can hold (model names start with a letter or digit): a live stub
# answers "model '__fleet_probe__' is not in pack ..." without running any model.
PROBE_MEMBER = "__fleet_probe__"
PROBE_MAX_ELEMENTS = 2**16


class Reconciler:
    def __init__(self, sessions: sessionmaker, settings: Settings, builder: RepositoryBuilder,
                 leadership: Leadership | None = None):
        self.sessions, self.settings, self.builder = sessions, settings, builder
        # Several replicas share one database; only the leader ticks (control_plane/leader.py).
        self.leadership: Leadership = leadership or AlwaysLeader()
        self._leading = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.http = requests.Session()
        self.last_tick_error: str | None = None
        self._last_probe = float("-inf")

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
                leading = self.leadership.is_leader()
                if leading and not self._leading:  # just became leader: own what others published
                    adopt_published_packs(self.sessions, self.builder)
                self._leading = leading
                if leading:
                    self.tick()
                self.last_tick_error = None
            except Exception as error:  # noqa: BLE001  the loop must survive anything and retry
                self.last_tick_error = str(error)
                log.exception("reconcile tick failed; retrying")
            self._wake.wait(self.settings.reconcile_interval_s)
            self._wake.clear()

    def tick(self) -> None:
        self.check_health()
        self.probe_packs()
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

    # ---- stub probe ----------------------------------------------------------------------------
    def probe_packs(self) -> None:
        """Reload loaded packs whose stub no longer answers (killed, crashed) or that the server lost.

        Triton's model readiness stays 200 after a Python-backend stub dies, so readiness cannot tell;
        an inference request for PROBE_MEMBER reaches the stub and is refused by the pack runtime itself.
        """
        interval = self.settings.stub_probe_interval_s
        if interval <= 0 or time.monotonic() - self._last_probe < interval:
            return
        self._last_probe = time.monotonic()
        with self.sessions() as session:
            rows = session.execute(select(Placement, Server).join(Server, Server.name == Placement.server)
                                   .where(Server.healthy.is_(True), Placement.state == "loaded")).all()
            work = []
            for placement, server in rows:
                signature = session.scalar(
                    select(ModelVersion.signature)
                    .join(Model, (Model.name == ModelVersion.model) & (Model.current_version == ModelVersion.version))
                    .where(Model.pack == placement.pack).limit(1))
                if signature:
                    work.append((placement.pack, server.name, server.http_url, signature["inputs"]))
        for pack, server, http_url, inputs in work:
            problem = self._probe(http_url, pack, inputs)
            if problem is None:
                continue
            # A load of an unchanged model is a no-op in Triton, so the dead instance is unloaded first.
            if self._repository_call(http_url, pack, "unload") is None:
                self._wait_unloaded(http_url, pack)
            with self.sessions.begin() as session:
                placement = session.get(Placement, (pack, server))
                if placement is None or placement.state != "loaded":
                    continue
                placement.state, placement.loaded_generation = "pending", -1
                placement.error = f"stub probe failed, reloading: {problem}"
                session.add(AuditEntry(action="pack.unhealthy", subject=pack,
                                       detail={"server": server, "reason": problem}))
            log.warning("pack %s on %s failed its stub probe (%s); reloading it", pack, server, problem)

    def _wait_unloaded(self, http_url: str, pack: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.http.get(f"{http_url}/v2/models/{pack}/ready", timeout=2.0).status_code != 200:
                    return
            except requests.RequestException:
                return
            time.sleep(0.1)

    def _probe(self, http_url: str, pack: str, inputs: list[dict]) -> str | None:
        """None if the pack's stub answered (or the probe is inconclusive); else what went wrong."""
        tensors = []
        for spec in inputs:
            shape = [1] + [d if d > 0 else 1 for d in spec["shape"][1:]]
            count = math.prod(shape)
            if count > PROBE_MAX_ELEMENTS:
                return None
            tensors.append({"name": spec["name"], "datatype": spec["dtype"], "shape": shape, "data": [0] * count})
        try:
            response = self.http.post(f"{http_url}/v2/models/{pack}/infer", timeout=5.0,
                                      json={"inputs": tensors, "parameters": {"model_id": PROBE_MEMBER}})
        except requests.RequestException:
            return None  # unreachable or busy: the health check decides about the server
        if f"'{PROBE_MEMBER}' is not in pack" in response.text:
            return None
        return f"HTTP {response.status_code}: {response.text[:300]}"

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
        sync_problems: dict[str, dict[str, str]] = {}  # server -> pack -> what the sync could not do
        for pack, server, generation, http_url, repository_path, has_members in work:
            if repository_path and server not in sync_problems:
                sync_problems[server] = self._sync_server(server, repository_path)
            problems = sync_problems.get(server, {})
            problem = problems.get(pack) or problems.get("*")
            if problem:
                # The server keeps its last good copy of the pack (sync never half-applies a model), so the
                # placement keeps its state and generation; the next tick tries again.
                with self.sessions.begin() as session:
                    placement = session.get(Placement, (pack, server))
                    if placement is not None and placement.error != problem:
                        placement.error = problem
                        session.add(AuditEntry(action="pack.sync_failed", subject=pack,
                                               detail={"server": server, "generation": generation,
                                                       "error": problem}))
                continue
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

    def _sync_server(self, server: str, repository_path: str) -> dict[str, str]:
        """Sync one server's repository from S3; returns, per pack ("*": all), why it could not be updated."""
        try:
            report = sync(self.settings.repository_uri, repository_path, self.builder.registry.s3)
        except SyncError as error:
            log.error("sync to %s failed: %s", server, error)
            return {"*": f"sync failed, serving the last good version: {error}"}
        problems: dict[str, list[str]] = {}
        for path, reason in report.refused.items():
            problems.setdefault(path.split("/", 1)[0], []).append(f"{path}: {reason}")
        if problems:
            log.error("sync to %s refused %s", server, report.refused)
        return {pack: "sync refused, serving the last good version: " + "; ".join(reasons)[:1000]
                for pack, reasons in problems.items()}

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
