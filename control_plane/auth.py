"""Scoped bearer tokens: who may read, write, run load tests or administer the fleet.

Tokens live in a JSON file (FLEET_TOKENS_FILE; on EKS a Secret mounted as a file) as sha256 hashes, never
in clear, and the file is re-read whenever its mtime changes, so rotating a token is editing (or
re-mounting) the file, with no restart:

    {"tokens": [{"name": "ci", "sha256": "<hex sha256 of the token>", "scopes": ["read", "write"]}]}

A plain sha256 is enough because tokens are long random strings (`fleet token new` style, >= 128 bits),
not passwords: there is nothing to brute-force. Comparisons are constant-time. The single FLEET_API_TOKEN
setting stays as a bootstrap token with every scope.

Which scope a route needs is decided here, from its method and endpoint, not by decorators spread over
the views: GET is `read`; deleting anything, servers and deployments are `admin`; starting a load test
is `loadtest`; every other write (register, versions, load/unload) is `write`; a route this table does
not know and that changes state needs `admin` (closed by default).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SCOPES = ("admin", "write", "read", "loadtest")
SCOPE_DESCRIPTIONS = {
    "admin": "servers, deployments, deletes and settings",
    "write": "register models, add versions, load and unload",
    "read": "list and get",
    "loadtest": "start load tests",
}
# Endpoints (blueprint.view) whose scope is not the method's default.
ENDPOINT_SCOPES = {
    "fleet.add_server": "admin",
    "fleet.create_deployment": "admin",
    "loadtests.start": "loadtest",
}
WRITE_BLUEPRINTS = ("models",)


def scope_for(endpoint: str | None, method: str) -> str:
    """The scope a request to `endpoint` with `method` needs."""
    method = method.upper()
    if endpoint in ENDPOINT_SCOPES and method not in ("GET", "HEAD", "OPTIONS"):
        return ENDPOINT_SCOPES[endpoint]
    if method in ("GET", "HEAD", "OPTIONS"):
        return "read"
    if method == "DELETE":
        return "admin"
    if endpoint and endpoint.split(".", 1)[0] in WRITE_BLUEPRINTS:
        return "write"
    return "admin"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    name: str
    sha256: str
    scopes: frozenset[str]


class TokenFileError(ValueError):
    pass


def parse_tokens(text: str, source: str) -> list[TokenEntry]:
    """Read a tokens file; a malformed one says what is wrong and where."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise TokenFileError(f"{source} is not valid JSON: {error}") from None
    items = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise TokenFileError(f'{source} must be {{"tokens": [{{"name", "sha256", "scopes"}}]}}')
    entries = []
    for k, item in enumerate(items):
        digest = str(item.get("sha256", "")).lower() if isinstance(item, dict) else ""
        scopes = item.get("scopes") if isinstance(item, dict) else None
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise TokenFileError(f"{source}: tokens[{k}].sha256 must be the 64-hex-digit sha256 of the token "
                                 "(python -c 'import hashlib,sys; print(hashlib.sha256(sys.argv[1].encode())"
                                 ".hexdigest())' TOKEN)")
        if not isinstance(scopes, list) or not scopes or set(scopes) - set(SCOPES):
            raise TokenFileError(f"{source}: tokens[{k}].scopes must be a non-empty list of {', '.join(SCOPES)}")
        entries.append(TokenEntry(str(item.get("name", f"token-{k}")), digest, frozenset(scopes)))
    return entries


class TokenStore:
    """The tokens that are valid right now: the bootstrap token plus the file's, reloaded on change."""

    def __init__(self, bootstrap_token: str | None, tokens_file: Path | None):
        self.bootstrap = hash_token(bootstrap_token) if bootstrap_token else None
        self.path = tokens_file
        self._entries: list[TokenEntry] = []
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            self._entries = parse_tokens(self.path.read_text(), str(self.path))  # refuse to start on a bad file
            self._stamp = self._stat()
        elif self.path is not None:
            # Not there yet (e.g. an optional Secret not created): only the bootstrap token works until the
            # file appears, which the next request's check picks up. Refusing to start would crash-loop.
            log.warning("tokens file %s does not exist (yet): only the bootstrap token is accepted", self.path)

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)  # type: ignore[arg-type]
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _refresh(self) -> None:
        stamp = self._stat()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            try:
                self._entries = parse_tokens(self.path.read_text(), str(self.path))  # type: ignore[union-attr]
                log.info("tokens file %s reloaded: %d tokens", self.path, len(self._entries))
            except (OSError, TokenFileError) as error:
                # Keep the last good set: a half-written file must not lock everyone out (or in).
                log.error("tokens file %s not reloaded, keeping the previous tokens: %s", self.path, error)
            self._stamp = stamp

    def scopes_of(self, token: str) -> frozenset[str] | None:
        """The scopes a presented token grants, or None if it is not a valid token."""
        digest = hash_token(token)
        if self.bootstrap is not None and hmac.compare_digest(digest, self.bootstrap):
            return frozenset(SCOPES)
        if self.path is not None:
            self._refresh()
        found = None
        for entry in self._entries:  # no early exit: the time taken does not depend on which entry matched
            if hmac.compare_digest(digest, entry.sha256):
                found = entry.scopes
        return found
