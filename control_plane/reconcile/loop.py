"""The reconciler: a loop over state managers, each of which brings one part of the fleet to the declared
state when its `update()` is called (the shape of Ray Serve's controller loop).

Two threads. The health thread runs `ServerHealth.update()` on its own cadence, concurrently, so a slow
load never delays failure detection. The reconcile thread runs `tick()`, which calls every other manager's
`update()` in this order:

0. empty index: until it succeeded once, an empty repository index where the prefix has none, so servers
   deployed before any registration sync an empty repository and become ready;
1. discovery: servers that joined or are leaving (EKS pods, ECS tasks);
2. stub probe: reload loaded packs whose stub no longer answers;
3. builds: build and publish packs whose membership changed;
4. traffic: request rates, recently called members and tier usage from the servers' metrics;
5. placement: plan replicas and working sets; new placements `pending`, surplus ones `retiring`;
6. assignments: publish each changed server's assignment to S3;
7. loading: sync local servers, load what is behind, verify the generation the server serves;
8. retirement: unload retiring replicas once every target replica of their pack is loaded;
9. disk tier: store each server's disk tier (local servers' sync reports, others' status from S3);
10. departures: delete the S3 documents of servers that left.

Each manager is given what it needs (the registry's sessions, the S3 client, Triton admin clients, the
workers) and keeps its own state; managers that must hear of another's findings get a callback (a dead
server is forgotten by the traffic meter and the assignment publisher). Several control-plane replicas
share one database; only the leader ticks (control_plane/leader.py).
"""
from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.orm import sessionmaker

from control_plane.discovery import DiscoverySettings
from control_plane.leader import AlwaysLeader, Leadership
from control_plane.observability import metrics
from control_plane.reconcile.builds import EmptyIndex, PackBuilds
from control_plane.reconcile.departures import Departures
from control_plane.reconcile.discovery import Discovery
from control_plane.reconcile.disk_tier import DiskTier
from control_plane.reconcile.health import ServerHealth
from control_plane.reconcile.loading import Loads
from control_plane.reconcile.placing import Placements, policy_of
from control_plane.reconcile.publishing import AssignmentPublisher
from control_plane.reconcile.retiring import Retirements
from control_plane.reconcile.stub_probe import StubProbe
from control_plane.reconcile.traffic import TrafficReadings
from control_plane.reconcile.workers import AdminClients, Workers
from control_plane.repository import RepositoryBuilder
from control_plane.settings import Settings
from control_plane.traffic import TrafficMeter

log = logging.getLogger(__name__)


class Reconciler:
    """`builder` None: packs are built elsewhere (benchmarks/reconcile_scale.py measures the rest)."""

    def __init__(self, sessions: sessionmaker, settings: Settings, builder: RepositoryBuilder | None, s3,
                 leadership: Leadership | None = None, *, admin: AdminClients | None = None,
                 discovery: DiscoverySettings | None = None) -> None:
        self.sessions, self.settings = sessions, settings
        self.leadership: Leadership = leadership or AlwaysLeader()
        self.admin = admin or AdminClients(settings.triton_admin_key)
        self.workers = Workers(settings.reconcile_workers, "reconcile")
        self.health_workers = Workers(max(4, settings.reconcile_workers), "health")
        self.traffic = TrafficMeter(settings.hot_member_window_s)
        self.assignments = AssignmentPublisher(sessions, settings, s3, self.workers)
        self.disk_tier = DiskTier(sessions, settings, s3, self.workers)
        self.health = ServerHealth(sessions, settings, self.admin, self.health_workers, on_dead=self._forget_dead)
        self.discovery = Discovery(sessions, discovery or DiscoverySettings.from_env(),
                                   settings.allowed_server_networks)
        self.probe = StubProbe(sessions, settings, self.admin, self.workers)
        self.empty_index = EmptyIndex(builder) if builder is not None else None
        self.builds = PackBuilds(sessions, builder, self.traffic) if builder is not None else None
        self.readings = TrafficReadings(sessions, self.admin, self.workers, self.traffic)
        families = builder is not None and builder.pack_settings.families  # packs built with families
        self.placements = Placements(sessions, policy_of(settings), self.traffic, families)
        self.loads = Loads(sessions, settings, s3, self.admin, self.workers, on_disk_status=self.disk_tier.report)
        self.retirements = Retirements(sessions, self.admin, self.workers, families)
        self.departures = Departures(sessions, settings, s3, on_forgotten=self.assignments.forget)
        self.managers = [m for m in (self.empty_index, self.discovery, self.probe, self.builds, self.readings,
                                     self.placements, self.assignments, self.loads, self.retirements,
                                     self.disk_tier, self.departures) if m is not None]
        self.last_tick_error: str | None = None
        self.last_tick_seconds: float | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def _forget_dead(self, servers: list[str]) -> None:
        for server in servers:
            self.traffic.forget(server)
        self.assignments.forget(servers)
        self.nudge()

    # ---- the loop ----------------------------------------------------------------------------------
    def tick(self) -> None:
        for manager in self.managers:
            manager.update()

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run_health, name="health", daemon=True),
                         threading.Thread(target=self._run, name="reconciler", daemon=True)]
        for thread in self._threads:
            thread.start()

    def running(self) -> bool:
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.workers.shutdown()
        self.health_workers.shutdown()
        self.admin.close()

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
                    self.health.update()
            except Exception:  # noqa: BLE001
                log.exception("health check failed; retrying")
            self._stop.wait(self.settings.health_interval_s)
