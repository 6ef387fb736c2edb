"""Brings the fleet to the declared state: applies the difference between where packs are and where the
placement function (control_plane.placement) says they should be.

Two threads. The health thread checks every server on its own cadence, concurrently, so a slow load never
delays failure detection; a server that stops answering for `server_dead_after_s` loses its placements
and the next tick places those packs elsewhere. The reconcile thread runs `tick()`:

0. until it succeeded once: publish an empty repository index where the prefix has none, so servers
   deployed before any registration sync an empty repository and become ready;
1. probe loaded packs' stubs (a Python-backend stub that died still reads "ready" in Triton), reload those
   that fail;
2. build and publish packs whose membership changed, with their generation and residency budget in their
   config parameters;
3. read request rates per pack and recently called members from the servers' metrics;
4. plan the assignment (replicas, traffic-weighted working sets) and record the difference: new
   placements `pending`, surplus ones `retiring` (still served);
5. publish each changed server's assignment to S3, sync local servers, load what is behind, and mark a
   placement `loaded` only once Triton's config for the pack carries the generation that was built;
6. unload retiring replicas once every target replica of their pack is loaded;
7. store each server's disk tier: local servers' sync reports, others' status from S3 (every
   `disk_status_interval_s`).

Work for different servers runs on a bounded thread pool; one server's loads run in order, so two loads
of the same pack on the same server never race.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import requests
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from control_plane.assignments import (
    AssignmentError,
    assigned_servers,
    forget_server,
    keep_disk_tier,
    publish_assignment,
    read_sync_status,
    with_disk_tier,
)
from control_plane.capacity import device_bytes
from control_plane.db import AuditEntry, Model, ModelVersion, Pack, Placement, Server
from control_plane.discovery import DiscoveryError, DiscoverySettings, apply, make_discoverer
from control_plane.leader import AlwaysLeader, Leadership
from control_plane.observability import metrics
from control_plane.placement import (
    STUB_BASE_BYTES,
    PackView,
    PlacementPolicy,
    ServerView,
    device_budget,
    needs_resize,
    plan_placement,
    residency_budget,
    working_set_bytes,
)
from control_plane.repository import RepositoryBuilder
from control_plane.settings import Settings
from control_plane.traffic import TrafficMeter, parse
from control_plane.trust import Untrusted, check_address
from fleet.triton_server import ADMIN_HEADER
from model_repository.s3_sync import SyncError, sync

log = logging.getLogger(__name__)
# The stub probe names a member no pack can hold (model names start with a letter or digit): a live stub
# answers "model '__fleet_probe__' is not in pack ..." without running any model.
PROBE_MEMBER = "__fleet_probe__"
PROBE_MAX_ELEMENTS = 2**16
RECORD_BATCH, RECORD_EVERY_S = 50, 1.0
__all__ = ["STUB_BASE_BYTES", "Reconciler"]


@dataclass(frozen=True)
class LoadResult:
    state: str  # loaded | pending (serves an older generation, or none yet) | failed
    generation: int  # the generation the server was read back to serve (-1: none or unknown)
    error: str | None
    residency_bytes: int = -1  # the max_resident_bytes it was read back to run with (-1: unknown)
    device_bytes: int = -1  # the max_device_bytes it was read back to run with (-1: none or unknown)


class Reconciler:
    def __init__(self, sessions: sessionmaker, settings: Settings, builder: RepositoryBuilder,
                 leadership: Leadership | None = None):
        self.sessions, self.settings, self.builder = sessions, settings, builder
        # Several replicas share one database; only the leader ticks (control_plane/leader.py).
        self.leadership: Leadership = leadership or AlwaysLeader()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._health_thread: threading.Thread | None = None
        self._local = threading.local()
        self._http = None
        self.pool = ThreadPoolExecutor(settings.reconcile_workers, thread_name_prefix="reconcile")
        self.health_pool = ThreadPoolExecutor(max(4, settings.reconcile_workers), thread_name_prefix="health")
        self.last_tick_error: str | None = None
        self.last_tick_seconds: float | None = None
        self._last_probe = float("-inf")
        self.traffic = TrafficMeter(settings.hot_member_window_s)
        self.policy = PlacementPolicy(settings.replicas_min, max(settings.replicas_min, settings.replicas_max),
                                      settings.hot_rps_per_replica, settings.cool_rps_per_replica)
        self._published: dict[str, dict[str, int]] = {}
        self.publish: Callable[..., None] = publish_assignment
        # Servers that join and leave by themselves (EKS pods, ECS tasks): FLEET_DISCOVERY_TARGET.
        self.discovery = DiscoverySettings.from_env()
        self._discoverer = None
        self._last_discovery = float("-inf")
        # The disk tier: local servers' sync reports (from _sync_server), others' status read from S3.
        self._disk_reports: dict[str, dict] = {}
        self._disk_lock = threading.Lock()
        self._last_disk_read = float("-inf")
        self._last_forget = float("-inf")
        self._repository_ready = False

    @property
    def http(self) -> requests.Session:
        """One HTTP session per thread: requests.Session is not documented as thread-safe."""
        if self._http is not None:
            return self._http
        session = getattr(self._local, "http", None)
        if session is None:
            session = self._local.http = requests.Session()
        return session

    @http.setter
    def http(self, session) -> None:
        """One client for every thread (tests hand in a recording stand-in)."""
        self._http = session

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        self._health_thread = threading.Thread(target=self._run_health, name="health", daemon=True)
        self._health_thread.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in (self._thread, self._health_thread):
            if thread:
                thread.join(timeout=30)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.health_pool.shutdown(wait=False, cancel_futures=True)

    def nudge(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if self.leadership.is_leader():  # several control planes, one reconciler
                    with metrics.timed_tick():
                        self.tick()
                self.last_tick_error = None
            except Exception as error:  # noqa: BLE001  the loop must survive anything and retry
                self.last_tick_error = str(error)
                log.exception("reconcile tick failed; retrying")
            self.last_tick_seconds = time.monotonic() - started
            self._wake.wait(self.settings.reconcile_interval_s)
            self._wake.clear()

    def _run_health(self) -> None:
        while not self._stop.is_set():
            try:
                if self.leadership.is_leader():  # health verdicts drop placements: the leader's job too
                    self.check_health()
            except Exception:  # noqa: BLE001
                log.exception("health check failed; retrying")
            self._stop.wait(self.settings.health_interval_s)

    def tick(self) -> None:
        self.ensure_repository()
        self.discover_servers()
        self.probe_packs()
        self.build_changed_packs()
        self.measure_traffic()
        self.place_packs()
        self.publish_assignments()
        self.load_placements()
        self.retire_replicas()
        self.read_disk_tiers()
        self.forget_departed_servers()

    def ensure_repository(self) -> None:
        """Until it succeeded once: an empty repository index where there is none, so servers deployed
        before any model is registered sync an empty repository and become Ready (docs/eks.md, step 7).
        An S3 failure is logged and retried next tick; the rest of the tick still runs."""
        if self._repository_ready:
            return
        try:
            self.builder.ensure_index()
            self._repository_ready = True
        except (ClientError, BotoCoreError) as error:
            log.error("cannot publish the empty repository index to %s: %s", self.builder.location, error)

    def discover_servers(self) -> None:
        """Register Triton pods (EKS) or tasks (ECS) that appeared and deregister those that left, every
        FLEET_DISCOVERY_INTERVAL_S; leaving ones are drained (control_plane/discovery/base.py). Only servers
        inside the allowed networks are registered (they get the admin key).
        A platform API failure changes nothing (control_plane/discovery)."""
        if self.discovery.target == "none" or time.monotonic() - self._last_discovery < \
                self.discovery.interval_s:
            return
        self._last_discovery = time.monotonic()
        try:
            if self._discoverer is None:
                self._discoverer = make_discoverer(self.discovery)
            found = []
            for server in self._discoverer.list_servers():
                try:
                    for address in (server.http_url, server.grpc_url):
                        check_address(address, self.settings.allowed_server_networks)
                    found.append(server)
                except Untrusted as error:
                    log.warning("discovered server %s refused: %s", server.name, error)
            apply(self.sessions, found, self._discoverer.prefix)
        except DiscoveryError as error:
            log.error("discovery (%s) failed, nothing changed: %s", self.discovery.target, error)

    def _each(self, pool: ThreadPoolExecutor, function: Callable, items: Iterable) -> list:
        """Run function over items on the pool; results in order; the first error is raised."""
        return list(pool.map(function, list(items)))

    # ---- health --------------------------------------------------------------------------------
    def _ready(self, http_url: str) -> tuple[str | None, bool]:
        """(None, _) while the server is alive, else (problem, slow). Liveness, not readiness: with strict
        readiness Triton answers "not ready" while any model loads, and the health thread runs during loads
        (a pack of 300 members takes ~8 s to load here), so readiness would declare a busy server dead.
        `slow`: the server accepted the connection but did not answer in time. That is what a busy server
        on a loaded machine does (three servers loading packs on two cores missed 1 s answers for seconds
        and were declared dead, dropping live replicas), so it gets the longer server_slow_dead_after_s; a
        killed one refuses the connection at once and gets server_dead_after_s."""
        try:
            response = self.http.get(f"{http_url}/v2/health/live", timeout=max(1.0, self.settings.server_dead_after_s))
            return (None, False) if response.status_code == 200 else (f"not live (HTTP {response.status_code})", False)
        except requests.ReadTimeout:
            return "slow: accepted the connection but did not answer liveness in time", True
        except requests.RequestException as error:
            return f"unreachable: {type(error).__name__}", False

    def check_health(self) -> None:
        with self.sessions() as session:
            targets = [(s.name, s.http_url) for s in session.scalars(select(Server))]
        problems = dict(zip([n for n, _ in targets],
                            self._each(self.health_pool, lambda t: self._ready(t[1]), targets), strict=True))
        now = datetime.now(UTC)
        dead = []
        with self.sessions.begin() as session:
            for server in session.scalars(select(Server)):
                if server.name not in problems:
                    continue
                problem, slow = problems[server.name]
                if problem is None:
                    if not server.healthy:
                        session.add(AuditEntry(action="server.recovered", subject=server.name))
                    server.healthy, server.last_seen, server.last_error = True, now, None
                    continue
                server.last_error = problem
                last_seen = server.last_seen.replace(tzinfo=UTC) if server.last_seen and \
                    server.last_seen.tzinfo is None else server.last_seen
                window = self.settings.server_slow_dead_after_s if slow else self.settings.server_dead_after_s
                if server.healthy and (last_seen is None or (now - last_seen).total_seconds() > window):
                    server.healthy = False
                    moved = session.execute(Placement.__table__.delete().where(Placement.server == server.name))
                    session.add(AuditEntry(action="server.dead", subject=server.name,
                                           detail={"reason": problem, "placements_dropped": moved.rowcount}))
                    log.warning("server %s is dead (%s); its packs will be re-placed", server.name, problem)
                    dead.append(server.name)
        for name in dead:
            self.traffic.forget(name)
            self._published.pop(name, None)
        if dead:
            self.nudge()

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
            rows = session.execute(select(Placement.pack, Server.name, Server.http_url)
                                   .join(Server, Server.name == Placement.server)
                                   .where(Server.healthy.is_(True), Placement.state == "loaded")).all()
            signatures = self._one_signature_per_pack(session, {pack for pack, _, _ in rows})
        work = [(pack, server, url, signatures[pack]) for pack, server, url in rows if pack in signatures]
        by_server: dict[str, list] = defaultdict(list)
        for item in work:
            by_server[item[1]].append(item)
        self._each(self.pool, lambda items: [self._probe_one(*item) for item in items], by_server.values())

    @staticmethod
    def _one_signature_per_pack(session: Session, packs: set[str]) -> dict[str, list[dict]]:
        signatures: dict[str, list[dict]] = {}
        if not packs:
            return signatures
        rows = session.execute(
            select(Model.pack, ModelVersion.signature)
            .join(ModelVersion, (Model.name == ModelVersion.model) & (Model.current_version == ModelVersion.version))
            .where(Model.pack.in_(packs)))
        for pack, signature in rows:
            signatures.setdefault(pack, signature["inputs"])
        return signatures

    def _probe_one(self, pack: str, server: str, http_url: str, inputs: list[dict]) -> None:
        problem = self._probe(http_url, pack, inputs)
        if problem is None:
            return
        # A load of an unchanged model is a no-op in Triton, so the dead instance is unloaded first.
        if self._repository_call(http_url, pack, "unload") is None:
            self._wait_unloaded(http_url, pack)
        with self.sessions.begin() as session:
            placement = session.get(Placement, (pack, server))
            if placement is None or placement.state != "loaded":
                return
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

    # ---- packs as the registry declares them ---------------------------------------------------
    @staticmethod
    def member_bytes(session: Session) -> dict[str, dict[str, int]]:
        """pack -> member -> artifact bytes, for members that should be served (one query)."""
        rows = session.execute(
            select(Model.pack, Model.name, ModelVersion.bytes)
            .join(ModelVersion, (Model.name == ModelVersion.model) & (Model.current_version == ModelVersion.version))
            .where(Model.pack.is_not(None), Model.desired == "loaded"))
        members: dict[str, dict[str, int]] = defaultdict(dict)
        for pack, name, size in rows:
            members[pack][name] = int(size)
        return members

    def _working_sets(self, members: dict[str, dict[str, int]]) -> dict[str, int]:
        hot = self.traffic.hot_members()
        return {pack: working_set_bytes(sizes.values(), [sizes[m] for m in hot.get(pack, ()) if m in sizes])
                for pack, sizes in members.items()}

    # ---- build ---------------------------------------------------------------------------------
    def build_changed_packs(self) -> None:
        # A read-only session: building writes files, not rows, and a write transaction held through a build
        # of a 1,000-member pack would block every registration (SQLite has one writer).
        with self.sessions() as session:
            stale = list(session.scalars(select(Pack).where(Pack.generation > Pack.built_generation)))
            if not stale:
                return
            working = self._working_sets(self.member_bytes(session))
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

    # ---- traffic -------------------------------------------------------------------------------
    def _scrape(self, server: str, metrics_url: str) -> None:
        try:
            response = self.http.get(metrics_url, timeout=2.0)
            response.raise_for_status()
        except requests.RequestException as error:
            log.debug("metrics of %s unavailable: %s", server, error)
            return
        self.traffic.observe(server, parse(response.text))

    def measure_traffic(self) -> None:
        with self.sessions() as session:
            targets = session.execute(select(Server.name, Server.metrics_url)
                                      .where(Server.healthy.is_(True), Server.metrics_url.is_not(None))).all()
        self._each(self.pool, lambda t: self._scrape(*t), targets)
        usage = self.traffic.take_tier_usage()  # what each tier holds, from the same scrape, for the API
        if usage:
            with self.sessions.begin() as session:
                for server in session.scalars(select(Server).where(Server.name.in_(usage))):
                    server.tier_usage = keep_disk_tier(server.tier_usage, usage[server.name])

    # ---- placement -----------------------------------------------------------------------------
    def place_packs(self) -> None:
        """Record the planned assignment: new placements pending, surplus ones retiring (still served)."""
        with self.sessions.begin() as session:
            servers = list(session.scalars(select(Server)))
            members = self.member_bytes(session)
            working = self._working_sets(members)
            rates = self.traffic.rates()
            packs = {p.name: p for p in session.scalars(select(Pack))}
            views = [PackView(name, pack.family, working[name], rates.get(name, 0.0))
                     for name, pack in packs.items() if pack.built_generation >= 0 and members.get(name)]
            placements = {(p.pack, p.server): p for p in session.scalars(select(Placement))}
            current: dict[str, list[str]] = defaultdict(list)
            for (pack, server), placement in placements.items():
                if not placement.retiring:
                    current[pack].append(server)
            plan = plan_placement(
                [ServerView(s.name, s.family, s.capacity_bytes,
                            "dead" if not s.healthy else "draining" if s.draining else "healthy") for s in servers],
                views, current, self.policy)
            for pack, server in sorted(plan.added(current)):
                placement = placements.get((pack, server))
                if placement is not None:  # a retiring replica wanted again: it is still loaded
                    placement.retiring = False
                else:
                    session.add(Placement(pack=pack, server=server, state="pending",
                                          reserved_bytes=working[pack]))
                session.add(AuditEntry(action="pack.place", subject=pack, detail={"server": server}))
            for pack, server in sorted(plan.removed(current)):
                placements[(pack, server)].retiring = True
                session.add(AuditEntry(action="pack.retire", subject=pack, detail={"server": server}))
            for name, pack in packs.items():
                for server in plan.assignment.get(name, ()):
                    placement = placements.get((name, server))
                    if placement is not None and placement.reserved_bytes != working[name]:
                        placement.reserved_bytes = working[name]
                reason = plan.reasons.get(name)
                if pack.pending_reason != reason:
                    pack.pending_reason = reason
                if name in working and pack.working_set_bytes != working[name]:
                    pack.working_set_bytes = working[name]
                rate = round(rates.get(name, 0.0), 3)
                if pack.request_rate != rate:
                    pack.request_rate = rate

    # ---- assignments, sync, load ---------------------------------------------------------------
    def publish_assignments(self) -> None:
        """Tell each server whose placements changed which packs (and generations) it should hold."""
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
                self.publish(self.builder.registry.s3, self.settings, server, packs)
                self._published[server] = packs
            except Exception as error:  # noqa: BLE001  retried next tick; loads wait on the sync anyway
                log.error("publishing %s's assignment failed: %s", server, error)
        self._each(self.pool, publish, changed)

    def load_placements(self) -> None:
        """Load placements behind their pack's generation; reload loaded ones whose residency budget is far
        from what their reservation now allows (needs_resize), with a config override."""
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
        self._each(self.pool, self._load_server, by_server.values())

    def _load_server(self, rows: list) -> None:
        """Sync one server (local servers) and load its packs that are behind, in order.

        Outcomes are written in small batches (every RECORD_EVERY_S or RECORD_BATCH loads): one commit per
        load cost more than the load of a small pack at 2,000 packs.
        """
        server, repository_path = rows[0].server, rows[0].repository_path
        problems = self._sync_server(server, repository_path, rows[0].disk_budget_bytes) if repository_path else {}
        outcomes: list[tuple[str, LoadResult | None, str | None, int, str]] = []
        flushed = time.monotonic()
        for row in sorted(rows, key=lambda r: r.pack):
            problem = problems.get(row.pack) or problems.get("*")
            if problem:
                # The server keeps its last good copy of the pack (sync never half-applies a model), so the
                # placement keeps its state and generation; the next tick tries again.
                outcomes.append((row.pack, None, problem, row.built_generation, "pack.sync_failed"))
            elif row.state == "loaded" and row.loaded_generation >= row.built_generation:
                result = self.resize(row.http_url, row.pack, row.built_generation, residency_budget(row.reserved_bytes),
                                     _device_budget(row))
                outcomes.append((row.pack, result, result.error, row.built_generation, "pack.resize"))
            else:
                started = time.monotonic()
                result = self.load_and_verify(row.http_url, row.pack, row.built_generation,
                                              residency_budget(row.reserved_bytes), _device_budget(row))
                metrics.record_load("load", time.monotonic() - started, result.error)
                outcomes.append((row.pack, result, result.error, row.built_generation, "pack.load"))
            if len(outcomes) >= RECORD_BATCH or time.monotonic() - flushed > RECORD_EVERY_S:
                self._record(server, outcomes)
                outcomes, flushed = [], time.monotonic()
        self._record(server, outcomes)

    def _record(self, server: str, outcomes: list[tuple[str, LoadResult | None, str | None, int, str]]) -> None:
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

    def load_and_verify(self, http_url: str, pack: str, generation: int, residency: int | None,
                        device: int | None = None) -> LoadResult:
        """Load a pack, then read its config back: `loaded` only if the server serves `generation`.

        A server that syncs itself (a sidecar) may not have the new files yet; Triton treats the load of an
        unchanged model as a no-op, so only the generation in the config it serves tells. If the pack's
        residency budget differs from the placement's, the pack is loaded again with Triton's config
        override carrying the placement's budget (files stay those on the server's disk); the same for the
        device tier's budget (`device`: gpu and inf2 servers).
        """
        error = self._repository_call(http_url, pack, "load")
        if error is not None:
            return LoadResult("failed", -1, error)
        config, unverified = self._serving(http_url, pack, generation)
        if unverified is not None:
            return unverified
        if (residency and _parameter(config, "max_resident_bytes") != str(residency)) or (
                device and _parameter(config, "max_device_bytes") != str(device)):
            return self._override_residency(http_url, pack, generation, config, residency, device)
        return _loaded(config, generation)

    def resize(self, http_url: str, pack: str, generation: int, residency: int,
               device: int | None = None) -> LoadResult:
        """Reload a loaded pack with other residency (and device tier) budgets, keeping the server's files."""
        config, unverified = self._serving(http_url, pack, generation)
        if unverified is not None:
            return unverified
        return self._override_residency(http_url, pack, generation, config, residency, device)

    def _serving(self, http_url: str, pack: str, generation: int) -> tuple[dict, LoadResult | None]:
        """The pack's config as the server serves it, and a result instead when that is not `generation`."""
        config, error = self._config(http_url, pack)
        if config is None:
            return {}, LoadResult("failed", -1, error)
        served = _parameter(config, "generation")
        if served != str(generation):
            return config, LoadResult("pending", _as_int(served), behind_reason(served, generation),
                                      _as_int(_parameter(config, "max_resident_bytes")))
        return config, None

    def _override_residency(self, http_url: str, pack: str, generation: int, config: dict,
                            residency: int | None, device: int | None = None) -> LoadResult:
        budgets = {"max_resident_bytes": residency, "max_device_bytes": device}
        override = {**config, "parameters": {**config.get("parameters", {}),
                                             **{k: {"string_value": str(v)} for k, v in budgets.items() if v}}}
        error = self._repository_call(http_url, pack, "load", {"parameters": {"config": json.dumps(override)}})
        if error is not None:
            return LoadResult("failed", -1, f"residency budget override: {error}")
        config, error = self._config(http_url, pack)
        if config is None:
            return LoadResult("failed", -1, error)
        served = _parameter(config, "generation")
        if served != str(generation):
            return LoadResult("pending", _as_int(served), behind_reason(served, generation),
                              _as_int(_parameter(config, "max_resident_bytes")),
                              _as_int(_parameter(config, "max_device_bytes")))
        return _loaded(config, generation)

    def _config(self, http_url: str, pack: str) -> tuple[dict | None, str | None]:
        try:
            response = self.http.get(f"{http_url}/v2/models/{pack}/config", timeout=10)
        except requests.RequestException as error:
            return None, f"reading the config back failed: server unreachable ({type(error).__name__})"
        if response.status_code != 200:
            return None, f"reading the config back failed (HTTP {response.status_code}): {response.text[:300]}"
        return response.json(), None

    def _sync_server(self, server: str, repository_path: str, disk_budget_bytes: int | None = None) -> dict[str, str]:
        """Sync one server's repository from S3, within its disk budget (None: free disk less a reserve);
        returns, per pack ("*": all), why it could not be updated."""
        try:
            with metrics.timed_sync():
                report = sync(self.settings.repository_uri, repository_path, self.builder.registry.s3,
                              server=server, disk_budget_bytes=disk_budget_bytes)
        except SyncError as error:
            log.error("sync to %s failed: %s", server, error)
            return {"*": f"sync failed, serving the last good version: {error}"}
        if report.status is not None:  # the disk tier, straight from the sync: no S3 round trip
            with self._disk_lock:
                self._disk_reports[server] = report.status
        problems: dict[str, list[str]] = {}
        for path, reason in report.refused.items():
            problems.setdefault(path.split("/", 1)[0], []).append(f"{path}: {reason}")
        if problems:
            log.error("sync to %s refused %s", server, report.refused)
        return {pack: "sync refused, serving the last good version: " + "; ".join(reasons)[:1000]
                for pack, reasons in problems.items()}

    # ---- disk tier -----------------------------------------------------------------------------
    def read_disk_tiers(self) -> None:
        """Store each server's disk tier in servers.tier_usage, next to what the Triton scrape wrote.

        Local servers (a repository_path: synced by this control plane) report through `_sync_server`.
        Servers that sync themselves (EKS sidecars, ECS tasks) publish their status to S3; it is read every
        `disk_status_interval_s`, not every tick, one GET per server, concurrently; a missing document (not
        synced yet) leaves the server's tier_usage as it is, and a failed read is only logged.
        """
        with self._disk_lock:
            statuses, self._disk_reports = self._disk_reports, {}
        if time.monotonic() - self._last_disk_read >= self.settings.disk_status_interval_s:
            self._last_disk_read = time.monotonic()
            with self.sessions() as session:
                remote = [n for n in session.scalars(select(Server.name).where(
                    Server.healthy.is_(True), Server.repository_path.is_(None))) if n not in statuses]
            for name, status in zip(remote, self._each(self.pool, self._read_sync_status, remote), strict=True):
                if status is not None:
                    statuses[name] = status
        if not statuses:
            return
        with self.sessions.begin() as session:
            for server in session.scalars(select(Server).where(Server.name.in_(statuses))):
                server.tier_usage = with_disk_tier(server.tier_usage, statuses[server.name])

    def _read_sync_status(self, server: str) -> dict | None:
        try:
            return read_sync_status(self.builder.registry.s3, self.settings, server)
        except AssignmentError as error:
            log.warning("disk tier of %s not updated: %s", server, error)
            return None

    def forget_departed_servers(self) -> None:
        """Delete the S3 assignment and sync status of servers no longer registered (a scaled-in pod or
        task, a server removed through the API), every `disk_status_interval_s`: one LIST, then a DELETE
        per departed server. Without it they stay in S3 forever and a server that comes back under the
        same name would start from a stale share. A failure is only logged and retried next time."""
        if time.monotonic() - self._last_forget < self.settings.disk_status_interval_s:
            return
        self._last_forget = time.monotonic()
        s3 = self.builder.registry.s3
        try:
            assigned = assigned_servers(s3, self.settings)
        except AssignmentError as error:
            log.warning("departed servers not forgotten: %s", error)
            return
        with self.sessions() as session:
            registered = set(session.scalars(select(Server.name)))
        for server in sorted(assigned - registered):
            try:
                forget_server(s3, self.settings, server)
            except AssignmentError as error:
                log.warning("%s", error)
                continue
            self._published.pop(server, None)  # a server back under this name gets its share published
            log.info("server %s left: its assignment and sync status were deleted from S3", server)

    # ---- retire --------------------------------------------------------------------------------
    def retire_replicas(self) -> None:
        """Unload surplus replicas, but only once every target replica of the pack serves its generation.

        A pack with no target replica at all keeps its retiring ones serving, unless it has no members.
        """
        with self.sessions() as session:
            retiring = session.execute(
                select(Placement.pack, Placement.server, Server.http_url, Server.healthy)
                .join(Server, Server.name == Placement.server).where(Placement.retiring.is_(True))).all()
            if not retiring:
                return
            packs = {r.pack for r in retiring}
            members = self.member_bytes(session)
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
        self._each(self.pool, lambda rows: [self._unload(r) for r in rows], by_server.values())

    def _unload(self, row) -> None:
        error = self._repository_call(row.http_url, row.pack, "unload") if row.healthy else None
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

    def _repository_call(self, http_url: str, pack: str, action: str, body: dict | None = None) -> str | None:
        headers = {ADMIN_HEADER: self.settings.triton_admin_key} if self.settings.triton_admin_key else {}
        try:
            response = self.http.post(f"{http_url}/v2/repository/models/{pack}/{action}", headers=headers,
                                      json=body, timeout=300)
        except requests.RequestException as error:
            return f"{action} failed: server unreachable ({type(error).__name__})"
        if response.status_code == 200:
            return None
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text
        return f"{action} failed (HTTP {response.status_code}): {detail[:500]}"


def _loaded(config: dict, generation: int) -> LoadResult:
    return LoadResult("loaded", generation, None, _as_int(_parameter(config, "max_resident_bytes")),
                      _as_int(_parameter(config, "max_device_bytes")))


def _device_budget(row) -> int | None:
    """The device tier budget of a placement row (server family, GPU budget, instance type, reservations)."""
    return device_budget(device_bytes(row.family, row.gpu_budget_bytes, row.instance_type), row.reserved_bytes,
                         row.server_reserved)


def _parameter(config: dict, name: str) -> str | None:
    value = config.get("parameters", {}).get(name)
    return value.get("string_value") if isinstance(value, dict) else None


def _as_int(value: str | None) -> int:
    try:
        return int(value) if value is not None else -1
    except ValueError:
        return -1


def behind_reason(served: str | None, expected: int) -> str:
    if served is None:
        return f"server's copy has no generation, waiting for {expected}: its sync is behind"
    return f"server has generation {served}, waiting for {expected}: its sync is behind"

