"""What every discovery target answers (the Triton servers that are up now) and how the answer is applied.

Why a name prefix: the registry also holds servers added by hand or by the local stack. Discovery only
ever adds and removes servers whose name starts with its own prefix (`eks-`, `ecs-`), so it can never
deregister a server it did not register.

Why three states and not a list of ready servers: a server that simply vanished from the answer lost its
placements at once, so an HPA scale-in lost the requests of every replica on the leaving pod. The
platforms say a server is leaving well before it is gone (an EndpointSlice endpoint `terminating`, a pod
with a deletionTimestamp; an ECS target `draining`, a task whose desiredStatus is STOPPED): such a server
is marked draining and keeps its placements, so the reconciler loads its replicas elsewhere before it
unloads them there (the pod's preStop hook waits for that, `fleet server wait-drained`). It is removed
only once the platform no longer lists it at all. A server listed but not ready (Triton answers "not
ready" while a model loads) is left as it is: the health thread, not discovery, decides it is dead.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from control_plane.db import AuditEntry, Placement, Server

log = logging.getLogger(__name__)


class DiscoveryError(RuntimeError):
    """The platform could not be asked; nothing was registered or removed."""


ServerState = Literal["ready", "leaving", "unready"]
DISCOVERY_DRAIN = "server.leaving"  # the audit action of a drain discovery started (a person's: server.drain)
PERSON_DRAIN = "server.drain"


@dataclass(frozen=True)
class Discovered:
    """A server the platform lists. `ready`: serving, register it; `leaving`: about to stop (drain it, keep
    its placements until it is gone); `unready`: up but failing readiness (keep what is known, add nothing)."""

    name: str
    family: str
    http_url: str
    grpc_url: str
    capacity_bytes: int
    state: ServerState = "ready"


class Discoverer(Protocol):
    prefix: str

    def list_servers(self) -> list[Discovered]:
        """The Triton servers the platform lists now (ready, leaving or unready), named with `prefix`."""


@dataclass
class DiscoveryResult:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    leaving: list[str] = field(default_factory=list)  # marked draining in this round
    returned: list[str] = field(default_factory=list)  # drained by discovery, ready again: un-drained


def apply(sessions: sessionmaker, found: list[Discovered], prefix: str) -> DiscoveryResult:
    """Register new ready servers, drain leaving ones, deregister those no longer listed (their placements
    go, so packs are re-placed), and follow address changes (a pod rescheduled under the same name)."""
    result = DiscoveryResult(present=sorted(s.name for s in found))
    by_name = {s.name: s for s in found}
    now = datetime.now(UTC)
    with sessions.begin() as session:
        known = {s.name: s for s in session.scalars(select(Server).where(Server.name.startswith(prefix)))}
        for name, server in sorted(by_name.items()):
            row = known.get(name)
            if server.state == "leaving":
                if row is not None and not row.draining:
                    row.draining = True
                    session.add(AuditEntry(action=DISCOVERY_DRAIN, subject=name,
                                           detail={"reason": "the platform is stopping it"}))
                    result.leaving.append(name)
                continue  # a leaving server never registered is not worth registering
            if row is None:
                if server.state == "ready":
                    session.add(Server(name=name, family=server.family, http_url=server.http_url,
                                       grpc_url=server.grpc_url, capacity_bytes=server.capacity_bytes,
                                       repository_path=None, healthy=True, last_seen=now))
                    session.add(AuditEntry(action="server.discovered", subject=name,
                                           detail={"family": server.family, "grpc_url": server.grpc_url}))
                    result.added.append(name)
                continue
            if (row.http_url, row.grpc_url, row.family) != (server.http_url, server.grpc_url, server.family):
                session.execute(Placement.__table__.delete().where(Placement.server == name))
                row.http_url, row.grpc_url, row.family = server.http_url, server.grpc_url, server.family
                session.add(AuditEntry(action="server.moved", subject=name, detail={"grpc_url": server.grpc_url}))
                result.updated.append(name)
            if server.state == "ready" and row.draining and _drained_by_discovery(session, name):
                row.draining = False
                session.add(AuditEntry(action="server.returned", subject=name,
                                       detail={"reason": "listed ready again (e.g. a StatefulSet pod "
                                                         "replaced under the same name)"}))
                result.returned.append(name)
        for name in sorted(set(known) - set(by_name)):
            session.execute(Placement.__table__.delete().where(Placement.server == name))
            session.delete(known[name])
            session.add(AuditEntry(action="server.gone", subject=name, detail={"reason": "no longer discovered"}))
            result.removed.append(name)
    if result.added or result.removed or result.updated or result.leaving or result.returned:
        log.info("discovery (%s*): added %s, leaving (draining) %s, back %s, removed %s, moved %s", prefix,
                 result.added, result.leaving, result.returned, result.removed, result.updated)
    return result


def _drained_by_discovery(session, name: str) -> bool:
    """Whether the server's latest drain was discovery's (a person's drain is never undone by discovery)."""
    latest = session.scalars(select(AuditEntry.action)
                             .where(AuditEntry.subject == name, AuditEntry.action.in_((DISCOVERY_DRAIN, PERSON_DRAIN)))
                             .order_by(AuditEntry.id.desc()).limit(1)).first()
    return latest == DISCOVERY_DRAIN
