"""Discovery: register Triton pods (EKS) or tasks (ECS) that appeared and deregister those that left,
every FLEET_DISCOVERY_INTERVAL_S; leaving ones are drained (control_plane/discovery/base.py). Only servers
inside the allowed networks are registered (they get the admin key). A platform API failure changes
nothing."""
from __future__ import annotations

import logging
import time

from sqlalchemy.orm import sessionmaker

from control_plane.discovery import Discoverer, DiscoveryError, DiscoverySettings, apply, make_discoverer
from control_plane.trust import Untrusted, check_address

log = logging.getLogger(__name__)


class Discovery:
    """`discoverer` is made from `settings` on first use; give one to use another (tests: a listed answer)."""

    name = "discovery"

    def __init__(self, sessions: sessionmaker, settings: DiscoverySettings, allowed_networks: list[str],
                 discoverer: Discoverer | None = None) -> None:
        self.sessions, self.settings, self.allowed_networks = sessions, settings, allowed_networks
        self.discoverer = discoverer
        self._last = float("-inf")

    def update(self) -> None:
        if self.settings.target == "none" or time.monotonic() - self._last < self.settings.interval_s:
            return
        self._last = time.monotonic()
        try:
            if self.discoverer is None:
                self.discoverer = make_discoverer(self.settings)
            found = []
            for server in self.discoverer.list_servers():
                try:
                    for address in (server.http_url, server.grpc_url):
                        check_address(address, self.allowed_networks)
                    found.append(server)
                except Untrusted as error:
                    log.warning("discovered server %s refused: %s", server.name, error)
            apply(self.sessions, found, self.discoverer.prefix)
        except DiscoveryError as error:
            log.error("discovery (%s) failed, nothing changed: %s", self.settings.target, error)
