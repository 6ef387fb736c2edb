"""The control plane's Flask app factory: registry, reconciler and REST API wired from one Settings."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from apiflask import APIFlask
from flask import request
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker
from werkzeug.exceptions import HTTPException

from control_plane.api import architectures as architectures_api
from control_plane.api import fleet as fleet_api
from control_plane.api import loadtests as loadtests_api
from control_plane.api import models as models_api
from control_plane.auth import SCOPE_DESCRIPTIONS, TokenStore, scope_for
from control_plane.db import Model, ModelVersion, make_engine, make_sessionmaker
from control_plane.deployments import DeploymentRunner
from control_plane.errors import ApiError, error_body, not_found
from control_plane.leader import Leadership, leadership_for
from control_plane.loadtests import LoadTestRunner
from control_plane.migrate import upgrade
from control_plane.observability import configure_logging
from control_plane.observability import install as install_observability
from control_plane.reconcile import Reconciler
from control_plane.registry import Registry
from control_plane.repository import RepositoryBuilder
from control_plane.schemas import NAME_PATTERN
from control_plane.settings import Settings
from control_plane.uploads import StagingRequest, body_limit
from control_plane.validation import ArtifactValidator, SandboxLimits
from control_plane.views import endpoints_by_pack, model_status
from model_repository.s3_sync import s3_client

log = logging.getLogger(__name__)
NAME_RE = re.compile(NAME_PATTERN)


@dataclass
class FleetState:
    """Everything the request handlers share; lives in app.extensions, not in module globals."""

    settings: Settings
    sessions: sessionmaker
    registry: Registry
    reconciler: Reconciler
    deployments: DeploymentRunner
    loadtests: LoadTestRunner
    validator: ArtifactValidator
    s3: object
    leadership: Leadership
    tokens: TokenStore

    def servable_catalogue(self) -> list[dict]:
        """Servable models with where to reach them; what load tests send traffic to."""
        with self.sessions() as session:
            served = endpoints_by_pack(session)
            rows = session.execute(select(Model, ModelVersion).join(
                ModelVersion, (ModelVersion.model == Model.name) &
                (ModelVersion.version == Model.current_version))).all()
            catalogue = []
            for model, version in rows:
                status, servers = model_status(model, served)
                if status == "servable":
                    catalogue.append({"id": model.name, "pack": model.pack, "server": servers[0].grpc_url,
                                      "inputs": version.signature["inputs"]})
            return catalogue


def create_app(settings: Settings | None = None, start_reconciler: bool = True) -> APIFlask:
    settings = settings or Settings.from_env()
    configure_logging()  # JSON lines (FLEET_LOG_FORMAT) from the first one, migrations included
    if settings.database_url.startswith("sqlite:///"):
        Path(settings.database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    s3 = s3_client(settings.s3_endpoint_url)
    validator = ArtifactValidator(settings.validation_workers, SandboxLimits(
        timeout_s=settings.validation_timeout_s, cpu_s=settings.validation_cpu_s,
        memory_base_bytes=settings.validation_memory_base_bytes,
        memory_factor=settings.validation_memory_factor), scratch=settings.work_dir / "validator")
    registry = Registry(sessions, settings, s3, validator)
    leadership = leadership_for(engine, settings.leader_lock_id, settings.leader_heartbeat_s)
    reconciler = Reconciler(sessions, settings, RepositoryBuilder(registry, settings.work_dir), s3, leadership)
    state = FleetState(settings, sessions, registry, reconciler, DeploymentRunner(sessions, settings), None,
                       validator, s3, leadership, TokenStore(settings.api_token, settings.tokens_file))  # type: ignore[arg-type]
    state.loadtests = LoadTestRunner(sessions, settings, state.servable_catalogue)

    app = APIFlask("triton-fleet-control-plane", title="triton-fleet control plane", version="0.1.0",
                   docs_path="/docs", spec_path="/openapi.json")
    app.request_class = StagingRequest  # uploaded files stream to hashed temp files (control_plane/uploads.py)
    app.config["MAX_CONTENT_LENGTH"] = body_limit(settings)
    app.config["VALIDATION_ERROR_STATUS_CODE"] = 422
    app.security_schemes = {"BearerAuth": {"type": "http", "scheme": "bearer"}}
    app.extensions["fleet"] = state
    for blueprint in (models_api.bp, fleet_api.bp, loadtests_api.bp, architectures_api.bp):
        app.register_blueprint(blueprint)
    install_observability(app)  # /metrics, the status page at /, JSON logs with request ids

    @app.before_request
    def require_token():
        if not request.path.startswith("/api/v1"):
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <token>' (FLEET_API_TOKEN, or a "
                           "token from FLEET_TOKENS_FILE)")
        scopes = state.tokens.scopes_of(token)
        if scopes is None:
            raise ApiError(403, "forbidden", "the bearer token is not valid")
        if request.endpoint is None:  # unknown route or method: let routing answer 404/405
            return None
        needed = scope_for(request.endpoint, request.method)
        if needed not in scopes:
            raise ApiError(403, "forbidden", f"this token lacks the '{needed}' scope that {request.method} "
                           f"{request.url_rule.rule if request.url_rule else request.path} needs",
                           {"required_scope": needed, "token_scopes": sorted(scopes)})
        name = (request.view_args or {}).get("name")
        if name is not None and not NAME_RE.fullmatch(name):
            # No model or server can have this name; answer before it reaches the database (PostgreSQL
            # refuses NUL bytes in text with an error, SQLite just finds nothing): 404 on both.
            raise not_found(request.path.split("/")[3].rstrip("s"), name)
        return None

    @app.spec_processor
    def document_auth(spec: dict) -> dict:
        """Each /api/v1 operation names its scope: in the security requirement, in x-required-scope and in
        its description, computed by the same scope_for the requests are checked with."""
        endpoints = {}
        for rule in app.url_map.iter_rules():
            path = re.sub(r"<(?:[^<>]*:)?(\w+)>", r"{\1}", rule.rule)
            for method in rule.methods or ():
                endpoints[(path, method.lower())] = rule.endpoint
        for path, operations in spec.get("paths", {}).items():
            if not path.startswith("/api/v1"):
                continue
            for method, operation in operations.items():
                scope = scope_for(endpoints.get((path, method)), method)
                operation["security"] = [{"BearerAuth": []}]
                operation["x-required-scope"] = scope
                note = f"Requires a token with the `{scope}` scope ({SCOPE_DESCRIPTIONS[scope]})."
                operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()
                operation.setdefault("responses", {}).setdefault("401", {"description": "no token"})
                operation["responses"].setdefault("403", {"description": f"invalid token, or no '{scope}' scope"})
        return spec

    @app.error_processor
    def render_error(error):
        return error_body(error)

    @app.errorhandler(HTTPException)
    def render_http_exception(error: HTTPException):
        from apiflask import HTTPError

        if error.code == 400 and request.is_json:
            return error_body(ApiError(400, "malformed_json", "the request body is not valid JSON; check its "
                                       "syntax and the Content-Type header"))
        return error_body(HTTPError(error.code or 500, error.description))

    @app.errorhandler(DBAPIError)
    def render_database_error(error: DBAPIError):
        if error.connection_invalidated or _is_unavailable(error):
            log.warning("database unavailable on %s %s: %s", request.method, request.path, error.orig)
            return error_body(ApiError(503, "database_unavailable", "the registry database cannot be reached "
                                       f"({type(error.orig).__name__}); nothing was changed, retry shortly",
                                       {"reason": str(error.orig).splitlines()[0][:300]}))
        return render_unexpected(error)

    @app.errorhandler(Exception)
    def render_unexpected(error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return {"error": {"code": "internal", "message": "internal error; see the control plane's log",
                          "details": {}}}, 500

    @app.get("/healthz")
    @app.doc(tags=["health"], summary="The process is up")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    @app.doc(tags=["health"], summary="Database and object store reachable, reconciler running",
             responses=[200, 503])
    def readyz():
        problems: dict = {}
        leadership = state.leadership.describe()
        try:
            with sessions() as session:
                session.execute(text("SELECT 1"))
        except Exception as error:  # noqa: BLE001
            problems["database"] = str(error)
        try:
            # A prefix-scoped listing, not head_bucket: the IAM policies (k8s/iam) grant s3:ListBucket only
            # with an s3:prefix condition, which head_bucket (no prefix) never satisfies.
            s3.list_objects_v2(Bucket=settings.bucket, Prefix=f"{settings.prefix}/" if settings.prefix else "",
                               MaxKeys=1)
        except Exception as error:  # noqa: BLE001
            problems["object_store"] = str(error)
        if start_reconciler and not reconciler.running():
            problems["reconciler"] = "not running"
        role = {"leader": leadership["leader"], "leadership": leadership}
        if problems:
            return {"status": "unavailable", "problems": problems, **role}, 503
        return {"status": "ready", **role}

    if start_reconciler:
        leadership.start()
        reconciler.start()
    return app


def _is_unavailable(error: DBAPIError) -> bool:
    """Connection-level failures (server down, restarting, network) as opposed to bad SQL or constraints."""
    sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None) or ""
    name = type(error.orig).__name__
    return sqlstate.startswith(("08", "57P")) or name in ("OperationalError", "InterfaceError")
