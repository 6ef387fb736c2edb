"""The disk tier: each server's sync status stored in servers.tier_usage, next to what the Triton scrape
wrote.

Local servers (a repository_path: synced by this control plane) report through loading's sync (`report`).
Servers that sync themselves (EKS sidecars, ECS tasks) publish their status to S3; it is read every
`disk_status_interval_s`, not every tick, one GET per server, concurrently; a missing document (not synced
yet) leaves the server's tier_usage as it is, and a failed read is only logged.
"""
from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from control_plane.assignments import AssignmentError, read_sync_status, with_disk_tier
from control_plane.db import Server
from control_plane.reconcile.workers import Workers
from control_plane.settings import Settings

log = logging.getLogger(__name__)


class DiskTier:
    name = "disk_tier"

    def __init__(self, sessions: sessionmaker, settings: Settings, s3, workers: Workers) -> None:
        self.sessions, self.settings, self.s3, self.workers = sessions, settings, s3, workers
        self._reports: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._last_read = float("-inf")

    def report(self, server: str, status: dict) -> None:
        """A local server's sync status, straight from its sync (no S3 round trip); stored next update."""
        with self._lock:
            self._reports[server] = status

    def update(self) -> None:
        with self._lock:
            statuses, self._reports = self._reports, {}
        if time.monotonic() - self._last_read >= self.settings.disk_status_interval_s:
            self._last_read = time.monotonic()
            with self.sessions() as session:
                remote = [n for n in session.scalars(select(Server.name).where(
                    Server.healthy.is_(True), Server.repository_path.is_(None))) if n not in statuses]
            for name, status in zip(remote, self.workers.each(self._read, remote), strict=True):
                if status is not None:
                    statuses[name] = status
        if not statuses:
            return
        with self.sessions.begin() as session:
            for server in session.scalars(select(Server).where(Server.name.in_(statuses))):
                server.tier_usage = with_disk_tier(server.tier_usage, statuses[server.name])

    def _read(self, server: str) -> dict | None:
        try:
            return read_sync_status(self.s3, self.settings, server)
        except AssignmentError as error:
            log.warning("disk tier of %s not updated: %s", server, error)
            return None
