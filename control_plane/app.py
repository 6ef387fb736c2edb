"""The control plane's Flask app factory: registry, reconciler and REST API wired from one Settings."""
from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from apiflask import APIFlask
from flask import request
from sqlalchemy import select, text
from sqlalchemy.orm import sessionmaker
from werkzeug.exceptions import HTTPException

from control_plane.api import fleet as fleet_api
from control_plane.api import loadtests as loadtests_api
from control_plane.api import models as models_api
from control_plane.db import Model, ModelVersion, make_engine, make_sessionmaker
from control_plane.deployments import DeploymentRunner
from control_plane.errors import ApiError, error_body
from control_plane.loadtests import LoadTestRunner
from control_plane.migrate import upgrade
from control_plane.observability import configure_logging
from control_plane.observability import install as install_observability
from control_plane.reconciler import Reconciler
from control_plane.registry import Registry
from control_plane.repository import RepositoryBuilder
from control_plane.settings import Settings
from control_plane.validation import ArtifactValidator
from control_plane.views import endpoints_by_pack, model_status
from model_repository.s3_sync import s3_client

log = logging.getLogger(__name__)


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
    validator = ArtifactValidator(settings.validation_workers)
    registry = Registry(sessions, settings, s3, validator)
    reconciler = Reconciler(sessions, settings, RepositoryBuilder(registry, settings.work_dir))
    state = FleetState(settings, sessions, registry, reconciler, DeploymentRunner(sessions, settings), None,
                       validator, s3)  # type: ignore[arg-type]
    state.loadtests = LoadTestRunner(sessions, settings, state.servable_catalogue)

    app = APIFlask("triton-fleet-control-plane", title="triton-fleet control plane", version="0.1.0",
                   docs_path="/docs", spec_path="/openapi.json")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.config["VALIDATION_ERROR_STATUS_CODE"] = 422
    app.security_schemes = {"BearerAuth": {"type": "http", "scheme": "bearer"}}
    app.extensions["fleet"] = state
    for blueprint in (models_api.bp, fleet_api.bp, loadtests_api.bp):
        app.register_blueprint(blueprint)
    install_observability(app)  # /metrics, the status page at /, JSON logs with request ids

    @app.before_request
    def require_token():
        if not request.path.startswith("/api/v1"):
            return None
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <token>' (FLEET_API_TOKEN)")
        if not hmac.compare_digest(token.encode(), settings.api_token.encode()):
            raise ApiError(403, "forbidden", "the bearer token is not valid")
        return None

    @app.spec_processor
    def document_auth(spec: dict) -> dict:
        for path, operations in spec.get("paths", {}).items():
            if path.startswith("/api/v1"):
                for operation in operations.values():
                    operation["security"] = [{"BearerAuth": []}]
                    operation.setdefault("responses", {}).setdefault("401", {"description": "no token"})
                    operation["responses"].setdefault("403", {"description": "wrong token"})
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
        problems = {}
        try:
            with sessions() as session:
                session.execute(text("SELECT 1"))
        except Exception as error:  # noqa: BLE001
            problems["database"] = str(error)
        try:
            s3.head_bucket(Bucket=settings.bucket)
        except Exception as error:  # noqa: BLE001
            problems["object_store"] = str(error)
        if start_reconciler and (reconciler._thread is None or not reconciler._thread.is_alive()):
            problems["reconciler"] = "not running"
        if problems:
            return {"status": "unavailable", "problems": problems}, 503
        return {"status": "ready"}

    if start_reconciler:
        reconciler.start()
    return app
