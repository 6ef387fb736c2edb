"""Servers leaving gracefully: drain through the control plane, wait until no replica is left, then stop.

Why drain first: a server that simply stops loses every request in flight and leaves its packs unservable
until the control plane notices; drained, its replicas are placed and loaded elsewhere first (the
reconciler honours the server's `draining` flag), so clients of replicated models see no failure.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests


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
