"""The model catalogue a load test draws from: which user models exist, in which pack, on which server.

Two sources, so a load test runs with or without the control plane:

* the control plane: ``GET {url}/api/v1/models?status=servable&page=N&per_page=K`` with
  ``Authorization: Bearer <token>``, paged until ``total`` items are read. The minimal item this module
  needs (docs/loadtest.md, "Catalogue contract") is ``{"id", "pack", "server", "inputs"}``; the
  registry's full model view (``name``, ``signature``, ``endpoints``, ``request_parameters``) is read too;
* a generated ``manifest.json`` (a file or its folder): pack names are recomputed with ``plan_packs``
  and the same ``--pack-size`` the repository was built with, and every model is served by ``--host``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from model_repository.contract import MODEL_ID_PARAMETER
from model_repository.manifest import MANIFEST_NAME, Manifest, TensorSpec
from model_repository.packing import plan_packs

log = logging.getLogger(__name__)
MODELS_PATH = "/api/v1/models"
PAGE_SIZE = 1000  # the control plane's largest page


class CatalogueError(RuntimeError):
    """The catalogue could not be read; the message says from where and why."""


@dataclass(frozen=True)
class CatalogueModel:
    """One user model as a client addresses it: pack (Triton model) + member id (request parameter)."""

    id: str
    pack: str
    server: str | None  # gRPC host:port; None means the load test's --host
    inputs: tuple[TensorSpec, ...]


class CatalogueItem(BaseModel):
    """One item of a control-plane page, in the minimal shape this module needs."""

    model_config = ConfigDict(extra="ignore")
    id: str
    pack: str | None
    server: str | None = None
    inputs: list[TensorSpec]

    @model_validator(mode="before")
    @classmethod
    def _from_registry_view(cls, data: Any) -> Any:
        """Map the registry's model view (name, signature, endpoints) onto the minimal contract."""
        if not isinstance(data, dict) or "id" in data or "name" not in data:
            return data
        endpoints = data.get("endpoints") or []
        return {"id": (data.get("request_parameters") or {}).get(MODEL_ID_PARAMETER, data["name"]),
                "pack": data.get("pack"),
                "server": endpoints[0].get("grpc_url") if endpoints else None,
                "inputs": (data.get("signature") or {}).get("inputs")}


def from_manifest(path: Path, pack_size: int) -> list[CatalogueModel]:
    """Every model of a generated manifest, in the pack `fleet pack --pack-size` put it in."""
    directory = path.parent if path.name == MANIFEST_NAME else path
    if not (directory / MANIFEST_NAME).exists():
        raise CatalogueError(f"no {MANIFEST_NAME} at {path}")
    try:
        manifest = Manifest.read(directory)
    except ValidationError as error:
        raise CatalogueError(f"{directory / MANIFEST_NAME} is not a valid manifest: {error}") from None
    return [CatalogueModel(m.id, plan.name, None, tuple(m.inputs))
            for plan in plan_packs(manifest.models, pack_size) for m in plan.members]


def from_control_plane(url: str, token: str | None, session: requests.Session | None = None,
                       timeout_s: float = 30.0) -> list[CatalogueModel]:
    """Every servable model the control plane lists, read page by page."""
    http = session or requests.Session()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    endpoint = url.rstrip("/") + MODELS_PATH
    models: list[CatalogueModel] = []
    unplaced = 0
    page = 1
    while True:
        params = {"status": "servable", "page": page, "per_page": PAGE_SIZE}
        try:
            response = http.get(endpoint, params=params, headers=headers, timeout=timeout_s)
        except requests.RequestException as error:
            raise CatalogueError(f"cannot reach the control plane at {endpoint}: {error}") from None
        if response.status_code in (401, 403):
            raise CatalogueError(f"{endpoint} refused the request ({response.status_code}): pass the API "
                                 "token with --token or FLEET_API_TOKEN")
        if response.status_code != 200:
            raise CatalogueError(f"{endpoint} answered {response.status_code}: {response.text[:300]}")
        body = response.json()
        try:
            items = [CatalogueItem.model_validate(item) for item in body["items"]]
        except (KeyError, TypeError, ValidationError) as error:
            raise CatalogueError(f"page {page} of {endpoint} does not match the catalogue contract "
                                 f"(docs/loadtest.md): {error}") from None
        for item in items:
            if item.pack is None:
                unplaced += 1
                continue
            models.append(CatalogueModel(item.id, item.pack, item.server, tuple(item.inputs)))
        if not items or page * int(body.get("per_page", PAGE_SIZE)) >= int(body.get("total", 0)):
            break
        page += 1
    if unplaced:
        log.warning("%d models have no pack yet and are left out of the load test", unplaced)
    return models


def load_catalogue(source: str, pack_size: int, token: str | None) -> list[CatalogueModel]:
    """A control-plane URL (http:// or https://) or a manifest path; refuses an empty catalogue."""
    if source.startswith(("http://", "https://")):
        models = from_control_plane(source, token)
    else:
        models = from_manifest(Path(source), pack_size)
    if not models:
        raise CatalogueError(f"the catalogue from {source} has no servable models")
    return models
