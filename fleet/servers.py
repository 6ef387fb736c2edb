"""Servers leaving gracefully: drain through the control plane, wait until no replica is left, then stop.

Why drain first: a server that simply stops loses every request in flight and leaves its packs unservable
until the control plane notices; drained, its replicas are placed and loaded elsewhere first (the
reconciler honours the server's `draining` flag), so clients of replicated models see no failure.

`wait_drained` is the server's own side of it (a Kubernetes preStop hook): it asks the local Triton, not
the control plane, because what must be empty before Triton stops is what Triton serves.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests

from model_repository.triton_admin import (
    TritonAdmin,
    TritonAdminError,
    TritonRefused,
    TritonSlow,
    TritonUnreachable,
)

log = logging.getLogger(__name__)


class ServerCommandError(RuntimeError):
    """The control plane refused or does not offer what was asked; the message says what to do."""


@dataclass
class ControlPlaneApi:
    url: str
    token: str | None

    def __post_init__(self) -> None:
        self.http = requests.Session()
        if self.token:
            self.http.headers["Authorization"] = f"Bearer {self.token}"

    def call(self, method: str, path: str) -> dict:
        try:
            response = self.http.request(method, f"{self.url.rstrip('/')}/api/v1{path}", timeout=30)
        except requests.RequestException as error:
            raise ServerCommandError(f"cannot reach the control plane at {self.url}: {type(error).__name__}; "
                                     "pass --url (or FLEET_CONTROL_PLANE_URL) or start it (`fleet up`)") from None
        if response.status_code == 405 or (response.status_code == 404 and "not_found" not in response.text):
            raise ServerCommandError(f"the control plane at {self.url} does not offer {method} /api/v1{path}; "
                                     "it needs a release with server draining")
        if response.status_code >= 400:
            raise ServerCommandError(f"{method} /api/v1{path} -> HTTP {response.status_code}: {response.text[:300]}")
        return response.json()


def local_stack_api(stack_file) -> ControlPlaneApi | None:
    """The control plane `fleet up` recorded, if any."""
    try:
        stack = json.loads(stack_file.read_text())
    except (OSError, ValueError):
        return None
    return ControlPlaneApi(stack["control_plane"], stack.get("token")) if "control_plane" in stack else None


def drain(api: ControlPlaneApi, name: str, wait_s: float = 0.0,
          on_progress: Callable[[dict], None] | None = None) -> dict:
    """Mark `name` draining; with wait_s > 0, wait until it holds no replica. Returns the server's state."""
    server = api.call("POST", f"/servers/{name}/drain")
    deadline = time.monotonic() + wait_s
    while wait_s and server.get("placed_packs"):
        if time.monotonic() > deadline:
            raise ServerCommandError(f"server {name} still holds {server['placed_packs']} after {wait_s:.0f} s; "
                                     "other servers may lack room for its replicas (see GET /api/v1/models)")
        time.sleep(1.0)
        server = api.call("GET", f"/servers/{name}")
        if on_progress:
            on_progress(server)
    return server


class TritonBusy(ServerCommandError):
    """Triton answered too slowly or with a server error: worth asking again, not a verdict."""


def also_log_to(path: str | None) -> None:
    """Send this module's log lines to `path` too (e.g. /proc/1/fd/1); a path that cannot be opened is
    reported and skipped: the wait itself matters more than where it is logged."""
    if not path:
        return
    try:
        handler = logging.FileHandler(path, mode="a")
    except OSError as error:
        log.warning("cannot log to %s (%s); logging to stderr only", path, error)
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s wait-drained: %(message)s"))
    log.addHandler(handler)


def loaded_models(triton_url: str, admin_key: str | None = None, timeout_s: float = 5.0) -> list[str] | None:
    """Names of the models the Triton at `triton_url` has READY; None if nothing answers there.

    `POST /v2/repository/index` is part of Triton's model-repository API, which the fleet's servers restrict
    to callers with the admin key (--http-restricted-api)."""
    try:
        return sorted(TritonAdmin(triton_url, admin_key).ready_models(timeout_s))
    except TritonUnreachable:
        return None
    except TritonSlow as error:
        raise TritonBusy(str(error)) from None
    except TritonRefused as error:
        raise ServerCommandError(f"{error}; pass the key with --admin-key (or TRITON_ADMIN_KEY)") from None
    except TritonAdminError as error:
        raise (TritonBusy if (error.status or 0) >= 500 else ServerCommandError)(str(error)) from None


def wait_drained(triton_url: str, timeout_s: float, admin_key: str | None = None, interval_s: float = 2.0,
                 report_every_s: float = 10.0) -> float:
    """Wait until the local Triton has no model loaded (the control plane moved its replicas elsewhere and
    unloaded them), or until it no longer answers at all. Returns the seconds waited; raises
    ServerCommandError, naming what is still loaded, when `timeout_s` passes first. A slow or failing
    answer (a busy server) is asked again; a refused key ends the wait at once, since no retry can fix it."""
    started = time.monotonic()
    deadline, reported = started + timeout_s, float("-inf")
    while True:
        try:
            loaded = loaded_models(triton_url, admin_key)
        except TritonBusy as error:
            if time.monotonic() >= deadline:
                raise ServerCommandError(f"{error}; gave up after {timeout_s:.0f} s") from None
            log.warning("%s; asking again", error)
            time.sleep(max(0.0, min(interval_s, deadline - time.monotonic())))
            continue
        waited = time.monotonic() - started
        if loaded is None:
            log.info("Triton at %s does not answer: nothing left to drain (%.1f s)", triton_url, waited)
            return waited
        if not loaded:
            log.info("drained: Triton at %s has no model loaded (waited %.1f s)", triton_url, waited)
            return waited
        if time.monotonic() >= deadline:
            raise ServerCommandError(
                f"Triton at {triton_url} still has {len(loaded)} models loaded after {timeout_s:.0f} s: "
                f"{', '.join(loaded[:10])}{' ...' if len(loaded) > 10 else ''}. The control plane has not moved "
                "them: is this server registered and marked draining (GET /api/v1/servers; on EKS the control "
                "plane needs FLEET_DISCOVERY_TARGET=eks), and do the other servers have room "
                "(GET /api/v1/models/NAME says why a pack is pending)?")
        if time.monotonic() - reported >= report_every_s:
            log.info("waiting for the drain: %d models still loaded (%s%s), %.0f s of %.0f s", len(loaded),
                     ", ".join(loaded[:5]), " ..." if len(loaded) > 5 else "", waited, timeout_s)
            reported = time.monotonic()
        time.sleep(max(0.0, min(interval_s, deadline - time.monotonic())))
