"""One error shape for every failure: {"error": {"code", "message", "details"}} with the right status."""
from __future__ import annotations

from typing import Any

from apiflask import HTTPError


class ApiError(HTTPError):
    """Raise with a status, a stable code and a message that says what to fix."""

    def __init__(self, status: int, code: str, message: str, details: Any = None):
        super().__init__(status, message, detail=details or {})
        self.code = code


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", f"{kind} '{ident}' does not exist; list them with GET /api/v1/{kind}s")


def error_body(error: HTTPError) -> tuple[dict, int, dict]:
    explicit = getattr(error, "code", None)
    code = explicit or {
        400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
        409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_input",
        503: "unavailable"}.get(error.status_code, "error")
    message = error.message
    if error.status_code == 413 and explicit is None:
        message = ("upload too large: the limit is the setting max_upload_bytes (FLEET_MAX_UPLOAD_BYTES); raise it "
                   "or upload a smaller model")
    if error.status_code == 422 and code == "invalid_input" and message in ("Validation error", None):
        message = "the request does not match the schema; see details (and /docs)"
    return ({"error": {"code": code, "message": message, "details": error.detail or {}}},
            error.status_code, dict(error.headers or {}))
