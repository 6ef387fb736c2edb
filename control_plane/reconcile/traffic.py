"""Traffic readings: one metrics scrape per healthy server per tick gives request rates per pack, the
members traffic keeps warm (control_plane/traffic.py `TrafficMeter`) and what each cache tier holds, which
is stored per server (servers.tier_usage) for the API."""
from __future__ import annotations

import logging

import requests
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from control_plane.assignments import keep_disk_tier
from control_plane.db import Server
from control_plane.reconcile.workers import AdminClients, Workers
from control_plane.traffic import TrafficMeter, scrape_of
from model_repository.triton_admin import TritonAdminError

log = logging.getLogger(__name__)


class TrafficReadings:
    name = "traffic"

    def __init__(self, sessions: sessionmaker, admin: AdminClients, workers: Workers, meter: TrafficMeter) -> None:
        self.sessions, self.admin, self.workers, self.meter = sessions, admin, workers, meter

    def _scrape(self, server: str, http_url: str, metrics_url: str) -> None:
        try:
            metrics = self.admin.at(http_url, metrics_url).scrape(timeout_s=2.0)
        except (requests.RequestException, TritonAdminError) as error:
            log.debug("metrics of %s unavailable: %s", server, error)
            return
        self.meter.observe(server, scrape_of(metrics))

    def update(self) -> None:
        with self.sessions() as session:
            targets = session.execute(select(Server.name, Server.http_url, Server.metrics_url)
                                      .where(Server.healthy.is_(True), Server.metrics_url.is_not(None))).all()
        self.workers.each(lambda t: self._scrape(*t), targets)
        usage = self.meter.take_tier_usage()  # what each tier holds, from the same scrape, for the API
        if usage:
            with self.sessions.begin() as session:
                for server in session.scalars(select(Server).where(Server.name.in_(usage))):
                    server.tier_usage = keep_disk_tier(server.tier_usage, usage[server.name])
