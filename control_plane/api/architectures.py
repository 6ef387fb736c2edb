"""/api/v1/architectures: the architecture families registered models belong to (docs/control-plane.md)."""
from __future__ import annotations

import re

from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import select

from control_plane.db import Architecture
from control_plane.errors import not_found
from control_plane.schemas import ArchitectureDetail, ArchitectureList
from control_plane.views import architecture_out

bp = APIBlueprint("architectures", __name__, url_prefix="/api/v1/architectures", tag="architectures")
ID_RE = re.compile(r"[0-9a-f]{64}")


@bp.get("")
@bp.output(ArchitectureList)
@bp.doc(summary="Architectures: one program each, stored and loaded once, shared by its members' weights")
def list_architectures():
    with current_app.extensions["fleet"].sessions() as session:
        rows = session.scalars(select(Architecture).order_by(Architecture.created_at, Architecture.id))
        return {"items": [architecture_out(session, a) for a in rows]}


@bp.get("/<string:ident>")
@bp.output(ArchitectureDetail)
@bp.doc(summary="One architecture: its tensor table (what a member's weights must match) and its members",
        responses=[200, 404])
def get_architecture(ident: str):
    with current_app.extensions["fleet"].sessions() as session:
        architecture = session.get(Architecture, ident) if ID_RE.fullmatch(ident) else None
        if architecture is None:
            raise not_found("architecture", ident)
        return architecture_out(session, architecture, detail=True)
