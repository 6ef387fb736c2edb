"""Turns registry rows into API responses, including where each model is served right now."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.db import Model, ModelVersion, Pack, Placement, Server


def endpoints_by_pack(session: Session) -> dict[str, list[tuple[Placement, Server]]]:
    rows = session.execute(select(Placement, Server).join(Server, Server.name == Placement.server)
                           .where(Server.healthy.is_(True), Placement.state == "loaded")).all()
    served: dict[str, list[tuple[Placement, Server]]] = {}
    for placement, server in rows:
        served.setdefault(placement.pack, []).append((placement, server))
    return served


def model_status(model: Model, served: dict[str, list[tuple[Placement, Server]]]) -> tuple[str, list]:
    if model.desired != "loaded":
        return "unloaded", []
    live = [s for p, s in served.get(model.pack or "", []) if p.loaded_generation >= model.joined_generation]
    return ("servable" if live else "pending"), live


def model_out(model: Model, version: ModelVersion, served) -> dict:
    status, servers = model_status(model, served)
    return {
        "name": model.name, "version": version.version, "sha256": version.sha256, "bytes": version.bytes,
        "format": version.format, "family": model.family, "pack": model.pack, "status": status,
        "signature": version.signature,
        "endpoints": [{"server": s.name, "grpc_url": s.grpc_url, "http_url": s.http_url} for s in servers],
        "request_parameters": {"model_id": model.name},
        "created_at": model.created_at,
    }


def server_out(session: Session, server: Server) -> dict:
    packs = list(session.scalars(select(Placement.pack).where(Placement.server == server.name)))
    return {"name": server.name, "family": server.family, "http_url": server.http_url,
            "grpc_url": server.grpc_url, "capacity_bytes": server.capacity_bytes, "healthy": server.healthy,
            "last_seen": server.last_seen, "last_error": server.last_error, "placed_packs": sorted(packs)}


def placement_out(session: Session, placement: Placement, pack: Pack) -> dict:
    members = session.scalar(select(Model).where(Model.pack == pack.name).with_only_columns(
        __import__("sqlalchemy").func.count()))
    return {"pack": placement.pack, "server": placement.server, "state": placement.state,
            "generation": pack.generation, "loaded_generation": placement.loaded_generation,
            "members": members or 0, "error": placement.error}
