"""Observability of the control plane: /metrics, the status page at /, JSON logs with request ids.

`install(app)` is the one hook in the app factory; everything else lives in this package.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import uuid

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.registry import Collector
from sqlalchemy import event

from control_plane.db import AuditEntry
from control_plane.observability import logs, metrics
from control_plane.observability.auth import presented_token, token_valid
from control_plane.observability.settings import ObservabilitySettings

log = logging.getLogger("control_plane.requests")
audit_log = logging.getLogger("control_plane.audit")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_metrics_servers: dict[int, object] = {}
_metrics_lock = threading.Lock()


class _Combined(Collector):
    """The process-wide registry (events, process, GC) and one app's state, as one scrape."""

    def __init__(self, app_registry: CollectorRegistry):
        self.app_registry = app_registry

    def collect(self):
        yield from REGISTRY.collect()
        yield from self.app_registry.collect()


def configure_logging() -> None:
    """The control plane's log format (FLEET_LOG_FORMAT: json, the default, or text)."""
    logs.configure(ObservabilitySettings.from_env().log_format)


def install(app: Flask) -> None:
    from control_plane.observability.status import bp as status_bp

    settings = ObservabilitySettings.from_env()
    state = app.extensions["fleet"]
    app.extensions["observability"] = settings
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Combined(metrics.make_registry(state)))
    _log_audit_entries(state.sessions)

    @app.before_request
    def _start_request():
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        g.started = time.monotonic()
        args = request.view_args or {}
        blueprint = request.blueprint or ""
        g.log_token = logs.bind(request_id=g.request_id,
                                model=args.get("name") if blueprint == "models" else None,
                                server=args.get("name") if blueprint == "fleet" else None)

    @app.after_request
    def _finish_request(response: Response) -> Response:
        request_id = getattr(g, "request_id", None)
        if request_id:
            response.headers["X-Request-Id"] = request_id
        endpoint = request.endpoint or "unmatched"
        seconds = time.monotonic() - getattr(g, "started", time.monotonic())
        metrics.HTTP_REQUESTS.labels(request.method, endpoint, f"{response.status_code // 100}xx").inc()
        metrics.HTTP_SECONDS.labels(endpoint).observe(seconds)
        code, body = None, None
        registration = endpoint in ("models.register", "models.register_from_s3")
        if (response.status_code >= 400 or registration) and response.is_json and not response.direct_passthrough:
            body = response.get_json(silent=True) or {}
            code = (body.get("error") or {}).get("code") if response.status_code >= 400 else None
        if registration:
            metrics.record_registration(response.status_code, code)
            if body and isinstance(body.get("name"), str):  # not request.form: it may be too large to parse
                logs.bind(model=body["name"])
        if endpoint not in ("healthz", "readyz", "observability_metrics"):
            level = logging.WARNING if response.status_code >= 500 else logging.INFO
            log.log(level, "%s %s -> %d", request.method, request.path, response.status_code,
                    extra={"method": request.method, "path": request.path, "status": response.status_code,
                           "duration_ms": round(seconds * 1000, 1), **({"error_code": code} if code else {})})
        return response

    @app.teardown_request
    def _end_request(_error=None):
        token = g.pop("log_token", None)
        if token is not None:
            try:
                logs.unbind(token)
            except ValueError:  # a different context (e.g. streamed response); nothing to undo
                pass

    @app.get("/metrics", endpoint="observability_metrics")
    @app.doc(tags=["health"], summary="Prometheus metrics (read token, or the internal metrics port)",
             responses=[200, 401])
    def metrics_endpoint():
        if not token_valid(presented_token(), "read"):
            return {"error": {"code": "unauthorized", "details": {},
                              "message": "send 'Authorization: Bearer <token>' with read access, or scrape the "
                                         "internal port set by FLEET_METRICS_PORT"}}, 401
        from prometheus_client import generate_latest

        return Response(generate_latest(scrape), mimetype=CONTENT_TYPE_LATEST)

    app.register_blueprint(status_bp)
    if settings.metrics_port is not None:
        with _metrics_lock:
            if settings.metrics_port not in _metrics_servers:
                _metrics_servers[settings.metrics_port] = start_http_server(
                    settings.metrics_port, settings.metrics_host, registry=scrape)
                logging.getLogger(__name__).info("metrics without a token on http://%s:%d/metrics",
                                                 settings.metrics_host, settings.metrics_port)


def _log_audit_entries(sessions) -> None:
    """Every audit entry the control plane commits also becomes a structured log line, with the model,
    pack and server it is about: the reconciler's decisions show up in the logs without touching it."""

    @event.listens_for(sessions, "after_flush")
    def _collect(session, _context):
        found = [e for e in session.new if isinstance(e, AuditEntry)]
        if found:
            session.info.setdefault("fleet_audit", []).extend(found)

    @event.listens_for(sessions, "after_commit")
    def _emit(session):
        for entry in session.info.pop("fleet_audit", []):
            detail = entry.detail or {}
            level = logging.WARNING if entry.action.endswith(("dead", "failed", "unhealthy")) else logging.INFO
            audit_log.log(level, "%s %s", entry.action, entry.subject,
                          extra={"action": entry.action, "detail": detail,
                                 **logs.audit_fields(entry.action, entry.subject, detail)})

    @event.listens_for(sessions, "after_rollback")
    def _drop(session):
        session.info.pop("fleet_audit", None)
