"""Catalogues from a manifest (packs recomputed) and from the control plane (paged, bearer token)."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from loadtest.catalogue import CatalogueError, from_control_plane, from_manifest, load_catalogue
from loadtest.workload import build_workload
from model_repository.manifest import Manifest
from model_repository.packing import build_repository

TOKEN = "test-token"
TEXT_INPUT = {"name": "INPUT__0", "dtype": "INT64", "shape": [-1, 8], "value_range": [0, 50]}
FREE_INPUT = {"name": "INPUT__0", "dtype": "FP32", "shape": [-1, -1]}


def minimal_item(k: int) -> dict:
    return {"id": f"user-{k:04d}", "pack": f"text-pack-{k // 1000:04d}", "server": "10.0.0.1:8001",
            "inputs": [TEXT_INPUT]}


def registry_item(k: int) -> dict:
    """The control plane's full model view (GET /api/v1/models today)."""
    return {"name": f"reg-{k}", "version": 1, "pack": "custom-pack-0000", "status": "servable",
            "signature": {"inputs": [FREE_INPUT], "outputs": [{"name": "OUTPUT__0", "dtype": "FP32",
                                                               "shape": [-1, 2]}]},
            "endpoints": [{"server": "s1", "grpc_url": "10.0.0.2:8001", "http_url": "http://10.0.0.2:8000"}],
            "request_parameters": {"model_id": f"reg-{k}"}}


class FakeControlPlane(BaseHTTPRequestHandler):
    items: list[dict] = []
    seen: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        type(self).seen.append({"path": url.path, "auth": self.headers.get("Authorization"), **query})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._reply(401, {"error": "unauthorized"})
        page, per_page = int(query["page"]), min(int(query["per_page"]), 1000)
        items = self.items[(page - 1) * per_page: page * per_page]
        self._reply(200, {"items": items, "page": page, "per_page": per_page, "total": len(self.items)})

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def control_plane() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeControlPlane)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeControlPlane.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_control_plane_pages_are_all_read_with_the_bearer_token(control_plane: str) -> None:
    FakeControlPlane.items = [minimal_item(k) for k in range(2500)] + [registry_item(k) for k in range(3)]
    models = from_control_plane(control_plane, TOKEN)
    assert len(models) == 2503 and len({m.id for m in models}) == 2503
    assert [s["page"] for s in FakeControlPlane.seen] == ["1", "2", "3"]
    assert all(s["path"] == "/api/v1/models" and s["status"] == "servable" for s in FakeControlPlane.seen)
    assert models[0].pack == "text-pack-0000" and models[0].server == "10.0.0.1:8001"
    registered = models[-1]
    assert (registered.id, registered.pack, registered.server) == ("reg-2", "custom-pack-0000", "10.0.0.2:8001")
    assert registered.inputs[0].shape == [-1, -1]


def test_a_missing_token_and_a_foreign_page_shape_are_explained(control_plane: str) -> None:
    FakeControlPlane.items = [minimal_item(0)]
    with pytest.raises(CatalogueError, match="pass the API token with --token or FLEET_API_TOKEN"):
        from_control_plane(control_plane, None)
    FakeControlPlane.items = [{"model": "x"}]
    with pytest.raises(CatalogueError, match="does not match the catalogue contract"):
        from_control_plane(control_plane, TOKEN)
    with pytest.raises(CatalogueError, match="cannot reach the control plane"):
        from_control_plane("http://127.0.0.1:9", TOKEN, timeout_s=2)


def test_manifest_catalogue_names_the_packs_that_build_repository_writes(generated_models: Path,
                                                                        tmp_path: Path) -> None:
    plans = build_repository(generated_models, tmp_path / "repo", pack_size=7)
    expected = {m.id: p.name for p in plans for m in p.members}
    for source in (generated_models, generated_models / "manifest.json"):
        models = from_manifest(source, pack_size=7)
        assert {m.id: m.pack for m in models} == expected
        assert all(m.server is None for m in models)
    with pytest.raises(CatalogueError, match="no manifest.json"):
        load_catalogue(str(tmp_path), 7, None)


def test_pre_built_requests_are_valid_for_each_model(generated_models: Path, control_plane: str) -> None:
    FakeControlPlane.items = [registry_item(0)]
    models = from_manifest(generated_models, 100) + from_control_plane(control_plane, TOKEN)
    workload = build_workload(models, "uniform", batch=3, name_by="pack/member")
    entries = Manifest.read(generated_models).by_id()
    for target in workload.targets:
        (tensor,) = target.inputs
        assert target.parameters == {"model_id": target.model.id}
        assert target.name == f"{target.model.pack}/{target.model.id}"
        spec = target.model.inputs[0]
        assert tensor.name() == spec.name and tensor.datatype() == spec.dtype
        shape = tensor.shape()
        assert shape[0] == 3 and all(d > 0 for d in shape)
        if target.model.id in entries:
            assert shape[1:] == entries[target.model.id].inputs[0].shape[1:]
        if spec.value_range:
            data = np.frombuffer(tensor._get_content(), dtype=np.int64)
            assert data.min() >= spec.value_range[0] and data.max() < spec.value_range[1]
    assert workload.probs.sum() == pytest.approx(1.0)
