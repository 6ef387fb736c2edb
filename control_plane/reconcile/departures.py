"""Departures: delete the S3 assignment and sync status of servers no longer registered (a scaled-in pod or
task, a server removed through the API), every `disk_status_interval_s`: one LIST, then a DELETE per
departed server. Without it they stay in S3 forever and a server that comes back under the same name
would start from a stale share. A failure is only logged and retried next time."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from control_plane.assignments import AssignmentError, assigned_servers, forget_server
from control_plane.db import Server
from control_plane.settings import Settings

log = logging.getLogger(__name__)


class Departures:
    """`on_forgotten` hears of each server whose S3 documents were deleted (its share is published again
    if it comes back under the same name)."""

    name = "departures"

    def __init__(self, sessions: sessionmaker, settings: Settings, s3,
                 on_forgotten: Callable[[list[str]], None] = lambda servers: None) -> None:
        self.sessions, self.settings, self.s3, self.on_forgotten = sessions, settings, s3, on_forgotten
        self._last = float("-inf")

    def update(self) -> None:
        if time.monotonic() - self._last < self.settings.disk_status_interval_s:
            return
        self._last = time.monotonic()
        try:
            assigned = assigned_servers(self.s3, self.settings)
        except AssignmentError as error:
            log.warning("departed servers not forgotten: %s", error)
            return
        with self.sessions() as session:
            registered = set(session.scalars(select(Server.name)))
        for server in sorted(assigned - registered):
            try:
                forget_server(self.s3, self.settings, server)
            except AssignmentError as error:
                log.warning("%s", error)
                continue
            self.on_forgotten([server])
            log.info("server %s left: its assignment and sync status were deleted from S3", server)
