"""Turns registry rows into API responses, including where each model is served right now and, when it
is not, why."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from control_plane.db import Architecture, Model, ModelVersion, Pack, Placement, Server
from control_plane.pending import PendingReason, pending_reason, serves, serves_generation
from model_repository.contract import request_parameters

Served = dict[str, list[tuple[Placement, Server]]]


@dataclass
class PackFacts:
    """What rendering models needs about their packs: the packs, all their placements with servers, and
    the replicas that serve (`served`). Read for a page's packs at once, so a page costs two queries
    however many models it holds."""

    packs: dict[str, Pack] = field(default_factory=dict)
    placements: dict[str, list[Placement]] = field(default_factory=dict)
    servers: dict[str, Server] = field(default_factory=dict)
    served: Served = field(default_factory=dict)


def pack_facts(session: Session, packs: Iterable[str | None] | None = None) -> PackFacts:
    """Facts about the named packs (None: every pack)."""
    names = None if packs is None else sorted({p for p in packs if p})
    facts = PackFacts()
    if names == []:
        return facts
    query = select(Pack) if names is None else select(Pack).where(Pack.name.in_(names))
    facts.packs = {pack.name: pack for pack in session.scalars(query)}
    for placement, server in _placements(session, names):
        facts.servers[server.name] = server
        facts.placements.setdefault(placement.pack, []).append(placement)
        if serves(placement, server):
            facts.served.setdefault(placement.pack, []).append((placement, server))
    return facts


def _placements(session: Session, packs: list[str] | None) -> list[tuple[Placement, Server]]:
    query = select(Placement, Server).join(Server, Server.name == Placement.server)
    if packs is not None:
        query = query.where(Placement.pack.in_(packs))
    return [(placement, server) for placement, server in session.execute(query)]


def endpoints_by_pack(session: Session, packs: Iterable[str | None] | None = None) -> Served:
    """Replicas that serve something (control_plane.pending.serves), by pack; every pack unless named."""
    names = None if packs is None else sorted({p for p in packs if p})
    served: Served = {}
    for placement, server in _placements(session, names) if names != [] else []:
        if serves(placement, server):
            served.setdefault(placement.pack, []).append((placement, server))
    return served


def status_column():
    """A model's status in SQL, for filtering and counting a listing without loading its rows: the same
    rule as model_status (control_plane.pending.serves and serves_generation), as a join target `live`
    (per pack, the newest generation a serving replica serves) and the CASE over it."""
    live = (select(Placement.pack.label("pack"), func.max(Placement.loaded_generation).label("generation"))
            .join(Server, Server.name == Placement.server)
            .where(Server.healthy.is_(True), Placement.state != "failed", Placement.loaded_generation >= 0)
            .group_by(Placement.pack).subquery("live"))
    status = case((Model.desired != "loaded", "unloaded"),
                  (live.c.generation >= Model.joined_generation, "servable"), else_="pending")
    return live, status


def model_status(model: Model, served: Served) -> tuple[str, list]:
    """Status and live replicas, in an order fixed per model (rendezvous hashing of model and server): a
    client that takes the first endpoint gets the same one on every call, and models spread over replicas."""
    if model.desired != "loaded":
        return "unloaded", []
    live = [s for p, s in served.get(model.pack or "", []) if serves_generation(p, model.joined_generation)]
    live.sort(key=lambda server: hashlib.blake2b(f"{model.name}/{server.name}".encode(), digest_size=8).digest())
    return ("servable" if live else "pending"), live


def model_reason(model: Model, facts: PackFacts) -> PendingReason:
    """Why a model that should be served is not (control_plane.pending.pending_reason)."""
    return pending_reason(model.joined_generation, facts.packs.get(model.pack or ""),
                          facts.placements.get(model.pack or "", []), facts.servers)


def architecture_refs(session: Session, ids: Iterable[str | None]) -> dict[str, dict]:
    """id -> {id, format, parameter_bytes, members} for the named architectures (two queries for a page)."""
    names = sorted({i for i in ids if i})
    if not names:
        return {}
    counts = dict(session.execute(
        select(ModelVersion.architecture, func.count())
        .join(Model, (Model.name == ModelVersion.model) & (Model.current_version == ModelVersion.version))
        .where(ModelVersion.architecture.in_(names)).group_by(ModelVersion.architecture)).all())
    return {a.id: {"id": a.id, "format": a.format, "parameter_bytes": a.parameter_bytes, "members": counts.get(a.id, 0)}
            for a in session.scalars(select(Architecture).where(Architecture.id.in_(names)))}


def model_out(model: Model, version: ModelVersion, facts: PackFacts,
              architectures: dict[str, dict] | None = None) -> dict:
    status, servers = model_status(model, facts.served)
    reason = model_reason(model, facts).text if status == "pending" else None
    return {
        "name": model.name, "version": version.version, "sha256": version.sha256, "bytes": version.bytes,
        "format": version.format, "family": model.family, "pack": model.pack, "status": status,
        "pending_reason": reason,
        "signature": version.signature,
        "endpoints": [{"server": s.name, "grpc_url": s.grpc_url, "http_url": s.http_url} for s in servers],
        "request_parameters": request_parameters(model.name),
        "architecture": (architectures or {}).get(version.architecture or ""),
        "whole_artifact_reason": None if version.architecture else version.split_reason,
        "created_at": model.created_at,
    }


def architecture_out(session: Session, architecture: Architecture, detail: bool = False) -> dict:
    members = select(Model.name, Model.pack).join(
        ModelVersion, (Model.name == ModelVersion.model) & (Model.current_version == ModelVersion.version)
    ).where(ModelVersion.architecture == architecture.id).order_by(Model.name)
    rows = session.execute(members).all()
    out = {"id": architecture.id, "format": architecture.format, "program_sha256": architecture.program_sha256,
           "program_bytes": architecture.program_bytes, "parameter_bytes": architecture.parameter_bytes,
           "tensors": len(architecture.tensors), "members": len(rows),
           "packs": sorted({pack for _, pack in rows if pack}), "created_at": architecture.created_at}
    if detail:
        out["table"] = architecture.tensors
        out["member_names"] = [name for name, _ in rows[:1000]]
    return out


def server_out(session: Session, server: Server) -> dict:
    rows = session.execute(select(Placement.pack, Placement.reserved_bytes)
                           .where(Placement.server == server.name)).all()
    reserved = sum(r.reserved_bytes for r in rows)
    return {"name": server.name, "family": server.family, "http_url": server.http_url,
            "grpc_url": server.grpc_url, "capacity_bytes": server.capacity_bytes,
            "instance_type": server.instance_type,
            "tiers": {"host_ram_bytes": server.capacity_bytes, "disk_bytes": server.disk_budget_bytes,
                      "gpu_bytes": server.gpu_budget_bytes, "neuron_cores": server.neuron_cores},
            "tier_usage": server.tier_usage,
            "reserved_bytes": reserved, "free_bytes": server.capacity_bytes - reserved,
            "healthy": server.healthy, "draining": server.draining,
            "last_seen": server.last_seen, "last_error": server.last_error,
            "placed_packs": sorted(r.pack for r in rows)}


def placement_out(session: Session, placement: Placement, pack: Pack) -> dict:
    members = session.scalar(select(func.count()).select_from(Model).where(Model.pack == pack.name))
    return {"pack": placement.pack, "server": placement.server, "state": placement.state,
            "generation": pack.generation, "loaded_generation": placement.loaded_generation,
            "members": members or 0, "reserved_bytes": placement.reserved_bytes,
            "residency_bytes": placement.residency_bytes, "retiring": placement.retiring,
            "error": placement.error}
