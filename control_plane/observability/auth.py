"""Who may read /metrics and the status page: the API's bearer token, in a header or a cookie.

The cookie exists for browsers: a status page that refreshes itself cannot send an Authorization
header, so /login takes the token once and keeps it in an HttpOnly, SameSite=Strict cookie.
"""
from __future__ import annotations

import hmac

from flask import current_app, request

COOKIE = "fleet_token"
LOOPBACK = {"127.0.0.1", "::1"}


def presented_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token
    return request.cookies.get(COOKIE) or None


def token_valid(token: str | None, scope: str = "read") -> bool:
    """True if `token` may `scope`. Today there is one token with every right; when the ha branch adds
    scoped tokens, replace the comparison below with its check that the token carries `scope`."""
    if not token:
        return False
    return hmac.compare_digest(token.encode(), current_app.extensions["fleet"].settings.api_token.encode())


def from_loopback() -> bool:
    return request.remote_addr in LOOPBACK
