"""A server that syncs its own repository (a sidecar) and is late: its models are never reported servable
before the server really serves the pack generation they joined.

The control plane here has no repository_path for the server, so it never syncs it; the test plays the
sidecar and copies the S3 repository into the server's folder when it chooses.
"""
from __future__ import annotations

import pytest

from fleet.waiting import wait_for
from model_repository.manifest import Manifest
from model_repository.s3_sync import sync

from .conftest import stack_on

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sidecar_stack(tmp_path_factory, seaweed):
    root = tmp_path_factory.mktemp("late")
    stack = stack_on(root, seaweed, "late", servers=("sidecar",), reconcile_interval_s=0.3, stub_probe_interval_s=0)
    with stack.start():
        server = stack.servers["sidecar"]
        response = stack.api().post(f"{stack.url}/api/v1/servers", json={
            "name": "sidecar", "family": "cpu", "http_url": server.http_url, "grpc_url": server.grpc_url,
            "capacity_bytes": 4 * 2**30})  # no repository_path: the server syncs itself
        assert response.status_code == 201, response.text
        yield {"cp": stack.control_plane, "server": server, "repo": server.repository,
               "uri": stack.settings.repository_uri, "s3": seaweed.client(), "stack": stack}


def model(stack, name: str) -> dict:
    response = stack["cp"].api().get(f"{stack['cp'].url}/api/v1/models/{name}")
    assert response.status_code == 200, response.text
    return response.json()


def placement(stack) -> dict | None:
    items = stack["cp"].api().get(f"{stack['cp'].url}/api/v1/placements").json()["items"]
    return items[0] if items else None


def register(stack, entry, models_dir) -> None:
    response = stack["stack"].register(models_dir, entry)
    assert response.status_code == 201, response.text


def test_a_late_sync_is_never_reported_loaded(sidecar_stack, generated_models):
    stack = sidecar_stack
    first, second = [m for m in Manifest.read(generated_models).models if m.architecture == "mlp"][:2]

    register(stack, first, generated_models)
    # The control plane built generation 1 and tried to load it; the server has no copy yet.
    failed = wait_for(lambda: (p := placement(stack)) and p["error"] and p)
    assert failed["state"] in ("failed", "pending")
    state = model(stack, first.id)
    assert state["status"] == "pending" and state["endpoints"] == []
    assert "sidecar:" in state["pending_reason"], state["pending_reason"]

    sync(stack["uri"], stack["repo"], stack["s3"])  # the sidecar catches up
    wait_for(lambda: model(stack, first.id)["status"] == "servable")

    register(stack, second, generated_models)  # same kind: joins the pack, generation 2
    behind = wait_for(lambda: (p := placement(stack)) and "waiting for 2" in (p["error"] or "") and p)
    assert behind["error"] == "server has generation 1, waiting for 2: its sync is behind"
    state = model(stack, second.id)
    assert state["status"] == "pending"
    assert state["pending_reason"] == "sidecar: server has generation 1, waiting for 2: its sync is behind"
    assert model(stack, first.id)["status"] == "servable", "the generation the server has still serves its members"

    sync(stack["uri"], stack["repo"], stack["s3"])
    wait_for(lambda: model(stack, second.id)["status"] == "servable")
    assert placement(stack)["loaded_generation"] == 2 and placement(stack)["state"] == "loaded"


def test_a_model_no_server_of_its_family_can_hold_is_refused_with_the_reason(sidecar_stack, generated_models):
    stack = sidecar_stack
    api, url = stack["cp"].api(), stack["cp"].url
    response = api.post(f"{url}/api/v1/servers", json={
        "name": "tiny-inf2", "family": "inf2", "http_url": stack["server"].http_url,
        "grpc_url": stack["server"].grpc_url, "capacity_bytes": 64 * 2**20})
    assert response.status_code == 201, response.text
    entry = Manifest.read(generated_models).models[-1]
    response = stack["stack"].register(generated_models, entry, name="too-big-for-inf2", family="inf2")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "model_too_large"
    assert "the largest inf2 server budget is 64 MB" in error["message"] and "Nothing was registered" in \
        error["message"]
    assert api.get(f"{url}/api/v1/models/too-big-for-inf2").status_code == 404
