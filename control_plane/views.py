"""Turns registry rows into API responses, including where each model is served right now and, when it
is not, why."""
from __future__ import annotations

import hashlib

from sqlalchemy import func, select
from sqlalchemy.orm import Session, object_session

from control_plane.db import Model, ModelVersion, Pack, Placement, Server


def endpoints_by_pack(session: Session) -> dict[str, list[tuple[Placement, Server]]]:
    """Replicas that serve something: on a healthy server, verified to serve a generation, not failed.

    A placement waiting for a newer generation still serves the members of the one it was read back to
    serve (`loaded_generation`); model_status compares that with the generation each model joined.
    """
    rows = session.execute(select(Placement, Server).join(Server, Server.name == Placement.server)
                           .where(Server.healthy.is_(True), Placement.state != "failed",
                                  Placement.loaded_generation >= 0)).all()
    served: dict[str, list[tuple[Placement, Server]]] = {}
    for placement, server in rows:
        served.setdefault(placement.pack, []).append((placement, server))
    return served


def model_status(model: Model, served: dict[str, list[tuple[Placement, Server]]]) -> tuple[str, list]:
    """Status and live replicas, in an order fixed per model (rendezvous hashing of model and server): a
    client that takes the first endpoint gets the same one on every call, and models spread over replicas."""
    if model.desired != "loaded":
        return "unloaded", []
    live = [s for p, s in served.get(model.pack or "", []) if p.loaded_generation >= model.joined_generation]
    live.sort(key=lambda server: hashlib.blake2b(f"{model.name}/{server.name}".encode(), digest_size=8).digest())
    return ("servable" if live else "pending"), live


def pending_reason(session: Session, model: Model) -> str:
    """Why a model that should be served is not, in words a person can act on."""
    pack = session.get(Pack, model.pack) if model.pack else None
    if pack is None:
        return "not in a pack yet"
    if pack.built_generation < model.joined_generation:
        return f"pack {pack.name} is being built (generation {model.joined_generation}; built so far: " \
               f"{max(pack.built_generation, 0)})"
    placements = list(session.scalars(select(Placement).where(Placement.pack == pack.name,
                                                              Placement.retiring.is_(False))
                                      .order_by(Placement.server)))
    if pack.pending_reason and not placements:
        return pack.pending_reason
    if not placements:
        return "waiting for the reconciler to place its pack"
    parts = []
    for placement in placements:
        server = session.get(Server, placement.server)
        if server is not None and not server.healthy:
            parts.append(f"{placement.server}: server unhealthy ({server.last_error or 'not answering'})")
        elif placement.error:
            parts.append(f"{placement.server}: {placement.error}")
        else:
            parts.append(f"{placement.server}: loading generation {pack.built_generation}")
    return "; ".join(parts)


def model_out(model: Model, version: ModelVersion, served) -> dict:
    status, servers = model_status(model, served)
    session = object_session(model)
    reason = pending_reason(session, model) if status == "pending" and session is not None else None
    return {
        "name": model.name, "version": version.version, "sha256": version.sha256, "bytes": version.bytes,
        "format": version.format, "family": model.family, "pack": model.pack, "status": status,
        "pending_reason": reason,
        "signature": version.signature,
        "endpoints": [{"server": s.name, "grpc_url": s.grpc_url, "http_url": s.http_url} for s in servers],
        "request_parameters": {"model_id": model.name},
        "created_at": model.created_at,
    }


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
