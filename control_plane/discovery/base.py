"""What every discovery target answers (the Triton servers that are up now) and how the answer is applied.

Why a name prefix: the registry also holds servers added by hand or by the local stack. Discovery only
ever adds and removes servers whose name starts with its own prefix (`eks-`, `ecs-`), so it can never
deregister a server it did not register.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from control_plane.db import AuditEntry, Placement, Server

log = logging.getLogger(__name__)


class DiscoverySettings(BaseModel):
    """Read from FLEET_DISCOVERY_* variables (see `from_env`)."""

    target: Literal["none", "eks", "ecs"] = Field("none", description="where Triton servers come and go")
    capacity_bytes: int = Field(8 * 2**30, ge=64 * 2**20,
                                description="a server's memory when its pod declares no memory limit")
    http_port: int = 8000
    grpc_port: int = 8001
    # EKS
    namespace: str = "triton-fleet"
    service_selector: str = Field("app.kubernetes.io/component=inference-server",
                                  description="label selector of the Triton Services whose pods are servers")
    # ECS
    region: str | None = None
    cluster: str | None = None
    target_group_arn: str | None = Field(None, description="the Triton tasks' target group (gRPC port)")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> DiscoverySettings:
        import os

        environ = os.environ if environ is None else environ
        values = {name: environ[f"FLEET_DISCOVERY_{name.upper()}"] for name in cls.model_fields
                  if f"FLEET_DISCOVERY_{name.upper()}" in environ}
        return cls(**{**values, **overrides})


class DiscoveryError(RuntimeError):
    """The platform could not be asked; nothing was registered or removed."""


@dataclass(frozen=True)
class Discovered:
    name: str
    family: str
    http_url: str
    grpc_url: str
    capacity_bytes: int


class Discoverer(Protocol):
    prefix: str

    def list_servers(self) -> list[Discovered]:
        """The ready Triton servers now, named with `prefix`."""


@dataclass
class DiscoveryResult:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)


def apply(sessions: sessionmaker, found: list[Discovered], prefix: str) -> DiscoveryResult:
    """Register new servers, deregister vanished ones (their placements go, so packs are re-placed), and
    follow address changes (a pod rescheduled under the same name)."""
    result = DiscoveryResult(present=sorted(s.name for s in found))
    by_name = {s.name: s for s in found}
    now = datetime.now(UTC)
    with sessions.begin() as session:
        known = {s.name: s for s in session.scalars(select(Server).where(Server.name.startswith(prefix)))}
        for name, server in sorted(by_name.items()):
            row = known.get(name)
            if row is None:
                session.add(Server(name=name, family=server.family, http_url=server.http_url,
                                   grpc_url=server.grpc_url, capacity_bytes=server.capacity_bytes,
                                   repository_path=None, healthy=True, last_seen=now))
                session.add(AuditEntry(action="server.discovered", subject=name,
                                       detail={"family": server.family, "grpc_url": server.grpc_url}))
                result.added.append(name)
            elif (row.http_url, row.grpc_url, row.family) != (server.http_url, server.grpc_url, server.family):
                session.execute(Placement.__table__.delete().where(Placement.server == name))
                row.http_url, row.grpc_url, row.family = server.http_url, server.grpc_url, server.family
                session.add(AuditEntry(action="server.moved", subject=name, detail={"grpc_url": server.grpc_url}))
                result.updated.append(name)
        for name in sorted(set(known) - set(by_name)):
            session.execute(Placement.__table__.delete().where(Placement.server == name))
            session.delete(known[name])
            session.add(AuditEntry(action="server.gone", subject=name, detail={"reason": "no longer discovered"}))
            result.removed.append(name)
    if result.added or result.removed or result.updated:
        log.info("discovery (%s*): added %s, removed %s, moved %s", prefix, result.added, result.removed,
                 result.updated)
    return result
