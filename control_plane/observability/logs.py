"""Structured JSON logs for the control plane, with the request, model, pack and server they are about.

Why JSON: CloudWatch Logs Insights, Loki and `jq` query fields, not prose. Why context variables: a
request id set once at the start of a request (or taken from the caller's X-Request-Id) reaches every
log line written while serving it, in any module, without passing it around. `model`, `pack` and
`server` come from the URL being served, from `extra={...}` on a log call, or from `log_context()`.
"""
from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

CONTEXT_FIELDS = ("request_id", "model", "pack", "server")
_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("fleet_log_context", default=None)
_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def bind(**fields: str | None) -> contextvars.Token:
    """Add fields to every log line of the current request or thread; returns a token for `unbind`."""
    return _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})


def unbind(token: contextvars.Token) -> None:
    _context.reset(token)


def current() -> dict[str, str]:
    return dict(_context.get() or {})


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601 with ms), level, logger, message, context, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        entry.update(_context.get() or {})
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(fmt: str = "json", level: int = logging.INFO) -> None:
    """Log JSON (or text) to stderr from the root logger. Replaces plain StreamHandlers (what
    logging.basicConfig installs) and leaves subclasses alone, e.g. pytest's capture handlers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler or getattr(handler, "fleet_observability", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.fleet_observability = True  # type: ignore[attr-defined]  found and replaced on the next call
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(min(root.level or level, level) if root.level else level)


def audit_fields(action: str, subject: str, detail: dict | None) -> dict[str, str]:
    """Which model/pack/server an audit entry is about, from its action's prefix and detail."""
    kind = action.split(".", 1)[0]
    fields = {kind: subject} if kind in ("model", "pack", "server") else {}
    if detail and isinstance(detail.get("server"), str):
        fields["server"] = detail["server"]
    if detail and isinstance(detail.get("pack"), str):
        fields["pack"] = detail["pack"]
    return fields
