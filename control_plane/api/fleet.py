"""/api/v1 servers, placements and deployments: the fleet the models are placed on."""
from __future__ import annotations

from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import select

from control_plane.capacity import INSTANCE_TYPES
from control_plane.db import AuditEntry, Deployment, Pack, Placement, Server
from control_plane.errors import ApiError, not_found
from control_plane.schemas import DeploymentIn, DeploymentOut, Message, PlacementList, ServerIn, ServerList, ServerOut
from control_plane.trust import Untrusted, check_address, check_repository_path
from control_plane.views import placement_out, server_out
from model_repository.triton_admin import TritonAdmin

bp = APIBlueprint("fleet", __name__, url_prefix="/api/v1", tag="fleet")


def _state():
    return current_app.extensions["fleet"]


@bp.post("/servers")
@bp.input(ServerIn, arg_name="body")
@bp.output(ServerOut, status_code=201)
@bp.doc(summary="Add a Triton server (endpoint, compute family, memory capacity)",
        description="Every address of http_url and grpc_url must be inside FLEET_ALLOWED_SERVER_NETWORKS and "
        "repository_path below FLEET_REPOSITORY_ROOT, else 422 naming them.", responses=[201, 409, 422, 503])
def add_server(body: ServerIn):
    state = _state()
    repository_path = _trusted(body, state.settings)
    if not TritonAdmin(body.http_url).ready(timeout_s=3):
        raise ApiError(503, "server_unreachable",
                       f"no ready Triton server answers at {body.http_url}/v2/health/ready; start it (or fix "
                       "http_url) and add it again. Nothing was recorded.")
    defaults = INSTANCE_TYPES.get(body.instance_type or "")
    if body.instance_type and defaults is None:
        raise ApiError(422, "unknown_instance_type",
                       f"no tier defaults for instance type '{body.instance_type}' (known: "
                       f"{', '.join(sorted(INSTANCE_TYPES))}); give capacity_bytes and the other budgets instead")
    capacity = body.capacity_bytes or (defaults.host_ram_bytes if defaults else None)
    if capacity is None:
        raise ApiError(422, "capacity_required",
                       "give capacity_bytes (host RAM the server may spend on packs) or a known instance_type")
    with state.sessions.begin() as session:
        if session.get(Server, body.name) is not None:
            raise ApiError(409, "name_taken", f"server '{body.name}' already exists; DELETE it first")
        server = Server(name=body.name, family=body.family, http_url=body.http_url, grpc_url=body.grpc_url,
                        capacity_bytes=capacity, repository_path=repository_path, healthy=True,
                        metrics_url=body.metrics_url, instance_type=body.instance_type,
                        disk_budget_bytes=body.disk_budget_bytes or (defaults.disk_bytes if defaults else None),
                        gpu_budget_bytes=body.gpu_budget_bytes or (defaults.gpu_bytes if defaults else None),
                        neuron_cores=body.neuron_cores or (defaults.neuron_cores if defaults else None))
        session.add(server)
        session.add(AuditEntry(action="server.add", subject=body.name, detail={"family": body.family}))
        session.flush()
        result = server_out(session, server)
    state.reconciler.nudge()
    return result, 201


def _trusted(body: ServerIn, settings) -> str | None:
    """Refuse (422, before contacting it) a server outside the allowed networks or a repository_path outside
    the repository root; the Triton admin key and the sync's deletions only ever reach what passes here."""
    try:
        for address in (body.http_url, body.grpc_url, *([body.metrics_url] if body.metrics_url else [])):
            check_address(address, settings.allowed_server_networks)
        if body.repository_path is None:
            return None
        return str(check_repository_path(body.repository_path, settings.repository_root))
    except Untrusted as error:
        raise ApiError(422, "server_not_allowed", str(error),
                       {"allowed_server_networks": settings.allowed_server_networks,
                        "repository_root": str(settings.repository_root.expanduser().resolve())}) from None


@bp.get("/servers")
@bp.output(ServerList)
@bp.doc(summary="Servers with their health and placed packs")
def list_servers():
    with _state().sessions() as session:
        return {"items": [server_out(session, s) for s in session.scalars(select(Server).order_by(Server.name))]}


@bp.get("/servers/<string:name>")
@bp.output(ServerOut)
@bp.doc(responses=[200, 404])
def get_server(name: str):
    with _state().sessions() as session:
        server = session.get(Server, name)
        if server is None:
            raise not_found("server", name)
        return server_out(session, server)


@bp.post("/servers/<string:name>/drain")
@bp.output(ServerOut)
@bp.doc(summary="Drain a server: its replicas are placed elsewhere and loaded, then unloaded here",
        responses=[200, 404])
def drain_server(name: str):
    state = _state()
    with state.sessions.begin() as session:
        server = session.get(Server, name)
        if server is None:
            raise not_found("server", name)
        # Recorded even when discovery already drains it: a person's drain is never undone by discovery
        # (control_plane/discovery/base.py undoes only a drain whose latest audit entry is its own).
        server.draining = True
        session.add(AuditEntry(action="server.drain", subject=name))
        result = server_out(session, server)
    state.reconciler.nudge()
    return result


@bp.delete("/servers/<string:name>")
@bp.output(Message)
@bp.doc(summary="Remove a server; its packs are placed elsewhere", responses=[200, 404])
def delete_server(name: str):
    state = _state()
    with state.sessions.begin() as session:
        server = session.get(Server, name)
        if server is None:
            raise not_found("server", name)
        session.execute(Placement.__table__.delete().where(Placement.server == name))
        session.delete(server)
        session.add(AuditEntry(action="server.remove", subject=name))
    state.reconciler.nudge()
    return {"message": f"server '{name}' removed"}


@bp.get("/placements")
@bp.output(PlacementList)
@bp.doc(summary="Which pack is on which server, and its load state")
def list_placements():
    with _state().sessions() as session:
        rows = session.execute(select(Placement, Pack).join(Pack, Pack.name == Placement.pack)
                               .order_by(Placement.pack)).all()
        return {"items": [placement_out(session, p, pack) for p, pack in rows]}


@bp.post("/deployments")
@bp.input(DeploymentIn, arg_name="body")
@bp.output(DeploymentOut, status_code=202)
@bp.doc(summary="Deploy the fleet to a target (local, eks, ecs)", responses=[202, 422, 503])
def create_deployment(body: DeploymentIn):
    state = _state()
    with state.sessions.begin() as session:
        deployment = Deployment(target=body.target, spec=body.model_dump(mode="json"), status="pending")
        session.add(deployment)
        session.flush()
        deployment_id = deployment.id
    state.deployments.start(deployment_id)
    with state.sessions() as session:
        d = session.get(Deployment, deployment_id)
        return ({"id": d.id, "target": d.target, "status": d.status, "spec": d.spec, "error": d.error,
                 "created_at": d.created_at}, 202)


@bp.get("/deployments/<int(max=2147483647):deployment_id>")  # ids are SQL INTEGER (int4 on PostgreSQL); larger: 404
@bp.output(DeploymentOut)
@bp.doc(responses=[200, 404])
def get_deployment(deployment_id: int):
    with _state().sessions() as session:
        d = session.get(Deployment, deployment_id)
        if d is None:
            raise not_found("deployment", str(deployment_id))
        return {"id": d.id, "target": d.target, "status": d.status, "spec": d.spec, "error": d.error,
                "created_at": d.created_at}
