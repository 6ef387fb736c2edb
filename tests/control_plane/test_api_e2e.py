"""The control plane over real HTTP, in front of real tritonservers and a real S3 server."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from control_plane.registry import artifacts_prefix
from control_plane.settings import Settings
from fleet.waiting import wait_for
from model_repository.generator import example_inputs
from model_repository.manifest import Manifest

from .conftest import TOKEN

pytestmark = pytest.mark.slow


def signature_of(entry) -> str:
    return json.dumps({"inputs": [i.model_dump(mode="json") for i in entry.inputs],
                       "outputs": [o.model_dump(mode="json") for o in entry.outputs]})


def register(stack, entry, models_dir, name=None, data: bytes | None = None, signature: str | None = None):
    artifact = data if data is not None else (models_dir / entry.file).read_bytes()
    return stack["cp"].api().post(f"{stack['cp'].url}/api/v1/models",
                                  data={"name": entry.id if name is None else name,
                                        "signature": signature or signature_of(entry)},
                                  files={"artifact": ("model.pt", artifact)})


def get(stack, path, **kwargs):
    return stack["cp"].api().get(f"{stack['cp'].url}/api/v1{path}", **kwargs)


def servable(stack, name):
    body = get(stack, f"/models/{name}").json()
    return body if body["status"] == "servable" else None


def infer(model: dict, entry, x: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(model["endpoints"][0]["grpc_url"])
    tensor = grpcclient.InferInput("INPUT__0", list(x.shape), entry.inputs[0].dtype)
    tensor.set_data_from_numpy(x)
    try:
        return client.infer(model["pack"], [tensor], parameters=model["request_parameters"]).as_numpy("OUTPUT__0")
    finally:
        client.close()


def artifacts_in_s3(stack, name) -> list[str]:
    folder = artifacts_prefix(Settings(repository_uri=stack["cp"].env["FLEET_REPOSITORY_URI"]))
    listing = stack["seaweed"].client().list_objects_v2(Bucket="models", Prefix=f"{folder}{name}/")
    return [o["Key"] for o in listing.get("Contents", [])]


def test_register_servable_infer_unload_delete(stack, generated_models):
    entry = Manifest.read(generated_models).models[0]
    created = register(stack, entry, generated_models)
    assert created.status_code == 201, created.text
    assert created.json()["sha256"] == entry.sha256
    model = wait_for(lambda: servable(stack, entry.id))
    (x,) = example_inputs(entry, batch=3)
    expected = torch.jit.load(str(generated_models / entry.file))(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(infer(model, entry, x), expected, rtol=1e-6, atol=1e-6)

    unload = stack["cp"].api().post(f"{stack['cp'].url}/api/v1/models/{entry.id}/unload")
    assert unload.status_code == 202 and unload.json()["status"] == "unloaded"

    def refused() -> str | None:
        try:
            infer(model, entry, x)
            return None
        except InferenceServerException as error:
            return str(error)
    message = wait_for(refused)
    # Its pack had no other member, so the pack itself was unloaded from the server.
    assert "is not in pack" in message or "unknown model" in message or "not found" in message, message

    deleted = stack["cp"].api().delete(f"{stack['cp'].url}/api/v1/models/{entry.id}")
    assert deleted.status_code == 200
    assert get(stack, f"/models/{entry.id}").status_code == 404
    assert artifacts_in_s3(stack, entry.id) == []


def test_registration_is_idempotent_for_the_same_content_and_refuses_other_content(stack, generated_models):
    first, second = Manifest.read(generated_models).models[1:3]
    assert register(stack, first, generated_models).status_code == 201
    again = register(stack, first, generated_models)
    assert again.status_code == 200 and again.json()["sha256"] == first.sha256
    clash = register(stack, second, generated_models, name=first.id)
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "name_taken"
    assert "/versions" in clash.json()["error"]["message"]
    assert get(stack, f"/models/{first.id}").json()["sha256"] == first.sha256


@pytest.mark.parametrize("name", ["../escape", "a/b", "Upper Case", "semi;colon", "x" * 200, ""])
def test_names_with_path_separators_or_odd_characters_are_refused(stack, generated_models, name):
    entry = Manifest.read(generated_models).models[3]
    response = register(stack, entry, generated_models, name=name)
    assert response.status_code == 422
    assert "name" in json.dumps(response.json()["error"]["details"])


def test_bad_artifacts_are_refused_and_leave_nothing_behind(stack, generated_models):
    entry = next(m for m in Manifest.read(generated_models).models if m.architecture == "mlp")
    cases = {
        "not-torchscript": (b"definitely not a zip", None, "not a zip archive"),
        "wrong-signature": (None, json.dumps({
            "inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, entry.inputs[0].shape[1] + 3]}],
            "outputs": [o.model_dump(mode="json") for o in entry.outputs]}), "calling the model"),
        "wrong-output": (None, json.dumps({
            "inputs": [i.model_dump(mode="json") for i in entry.inputs],
            "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, 999]}]}), "declares"),
    }
    for name, (data, signature, message) in cases.items():
        response = register(stack, entry, generated_models, name=name, data=data, signature=signature)
        assert response.status_code == 422, response.text
        assert message in response.json()["error"]["message"]
        assert get(stack, f"/models/{name}").status_code == 404
        assert artifacts_in_s3(stack, name) == []


def test_malformed_signature_json_and_missing_fields_are_4xx(stack, generated_models):
    entry = Manifest.read(generated_models).models[4]
    bad_json = register(stack, entry, generated_models, name="bad-json", signature="{not json")
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "malformed_json"
    missing = stack["cp"].api().post(f"{stack['cp'].url}/api/v1/models", data={"name": "no-artifact"})
    assert missing.status_code == 422
    body = stack["cp"].api().post(f"{stack['cp'].url}/api/v1/servers", data="{broken",
                                  headers={"Content-Type": "application/json"})
    assert body.status_code == 400 and body.json()["error"]["code"] == "malformed_json"


def test_oversized_uploads_get_413(stack, generated_models):
    entry = Manifest.read(generated_models).models[5]
    response = register(stack, entry, generated_models, name="huge", data=b"\0" * (2**20 + 10))
    assert response.status_code == 413
    assert "FLEET_MAX_UPLOAD_BYTES" in response.json()["error"]["message"]


def test_s3_uris_outside_the_bucket_are_refused(stack, generated_models):
    entry = Manifest.read(generated_models).models[6]
    body = {"name": "elsewhere", "s3_uri": "s3://someone-elses-bucket/model.pt",
            "signature": json.loads(signature_of(entry))}
    response = stack["cp"].api().post(f"{stack['cp'].url}/api/v1/models/from-s3", json=body)
    assert response.status_code == 400 and response.json()["error"]["code"] == "s3_uri_outside_bucket"


def test_register_by_s3_uri_inside_the_bucket(stack, generated_models):
    entry = Manifest.read(generated_models).models[7]
    stack["seaweed"].client().put_object(Bucket="models", Key=f"uploads/{entry.id}.pt",
                                         Body=(generated_models / entry.file).read_bytes())
    body = {"name": entry.id, "s3_uri": f"s3://models/uploads/{entry.id}.pt",
            "signature": json.loads(signature_of(entry))}
    response = stack["cp"].api().post(f"{stack['cp'].url}/api/v1/models/from-s3", json=body)
    assert response.status_code == 201, response.text
    assert wait_for(lambda: servable(stack, entry.id))["sha256"] == entry.sha256


def test_unknown_ids_are_404_with_a_hint(stack):
    for path in ("/models/nope", "/servers/nope", "/loadtests/999", "/deployments/999"):
        response = get(stack, path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_a_dead_triton_server_cannot_be_added(stack):
    response = stack["cp"].api().post(f"{stack['cp'].url}/api/v1/servers", json={
        "name": "ghost", "family": "cpu", "http_url": "http://127.0.0.1:9", "grpc_url": "127.0.0.1:9",
        "capacity_bytes": 2**30})
    assert response.status_code == 503 and "Nothing was recorded" in response.json()["error"]["message"]
    assert get(stack, "/servers/ghost").status_code == 404


def test_every_api_route_requires_the_bearer_token(stack):
    spec = stack["cp"].api(token=None).get(f"{stack['cp'].url}/openapi.json").json()
    routes = [(method, path) for path, ops in spec["paths"].items() if path.startswith("/api/v1")
              for method in ops]
    assert len(routes) >= 15
    for method, path in routes:
        url = stack["cp"].url + path.replace("{name}", "mlp-00000").replace("{loadtest_id}", "1") \
            .replace("{deployment_id}", "1")
        for token, status in ((None, 401), ("wrong-token", 403)):
            response = stack["cp"].api(token=token).request(method.upper(), url, json={})
            assert response.status_code == status, (method, path, token, response.text)
            assert "mlp-00000" not in response.text, "an auth failure must not reveal whether a model exists"
        assert spec["paths"][path][method]["security"] == [{"BearerAuth": []}]


def test_many_models_become_servable_on_both_servers(stack, generated_models):
    entries = Manifest.read(generated_models).models[10:40]
    for entry in entries:
        assert register(stack, entry, generated_models).status_code == 201
    wait_for(lambda: all(servable(stack, e.id) for e in entries))
    # replicas_min 2: every pack is verified loaded on both servers before its models leave "pending"...
    wait_for(lambda: all(len(servable(stack, e.id)["endpoints"]) == 2 for e in entries))
    for entry in entries[:3]:  # ...and each replica answers
        model = servable(stack, entry.id)
        for endpoint in model["endpoints"]:
            (x,) = example_inputs(entry, batch=1)
            assert infer({**model, "endpoints": [endpoint]}, entry, x).shape[0] == 1
    listed = get(stack, "/models", params={"status": "servable", "per_page": 5, "page": 2}).json()
    assert listed["page"] == 2 and len(listed["items"]) == 5 and listed["total"] >= 30


def test_a_load_test_started_through_the_api_reaches_many_models_without_failures(stack):
    api = stack["cp"].api()
    started = api.post(f"{stack['cp'].url}/api/v1/loadtests",
                       json={"users": 8, "spawn_rate": 8, "duration_s": 6, "mix": "uniform"})
    assert started.status_code == 202 and started.json()["status"] in ("pending", "running")
    test = wait_for(lambda: (t := get(stack, f"/loadtests/{started.json()['id']}").json())["status"]
                    not in ("pending", "running") and t, timeout_s=120)
    assert test["status"] == "succeeded", test["error"]
    aggregated = test["results"]["aggregated"]
    servable_count = get(stack, "/models", params={"status": "servable"}).json()["total"]
    assert aggregated["requests"] > 100 and aggregated["failures"] == 0
    assert test["results"]["models_hit"] >= min(20, servable_count)


def test_a_killed_server_s_replicas_keep_answering_on_the_other(stack, generated_models):
    entries = Manifest.read(generated_models).models[10:40]
    before = {e.id: servable(stack, e.id) for e in entries}
    assert all(len(m["endpoints"]) == 2 for m in before.values()), "every pack has a replica on each server"
    victim = before[entries[0].id]["endpoints"][0]["server"]
    survivor = ({"triton-a", "triton-b"} - {victim}).pop()
    server, _ = stack["servers"][victim]
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    # The surviving replica answers at once, before the control plane has even noticed the death.
    for entry in entries[::5]:
        model = before[entry.id]
        (x,) = example_inputs(entry, batch=1)
        on_survivor = [e for e in model["endpoints"] if e["server"] == survivor]
        assert infer({**model, "endpoints": on_survivor}, entry, x).shape[0] == 1

    def all_on_survivor():
        models = [servable(stack, e.id) for e in entries]
        return all(m and m["endpoints"][0]["server"] == survivor for m in models)
    wait_for(all_on_survivor, timeout_s=180)
    model = servable(stack, entries[0].id)
    (x,) = example_inputs(entries[0], batch=1)
    assert infer(model, entries[0], x).shape[0] == 1
    health = get(stack, f"/servers/{victim}").json()
    assert health["healthy"] is False and health["placed_packs"] == []


def test_a_restarted_control_plane_keeps_every_registration(stack):
    before = get(stack, "/models", params={"per_page": 1000}).json()
    stack["cp"].stop()
    stack["cp"].start()
    after = get(stack, "/models", params={"per_page": 1000}).json()
    assert after["total"] == before["total"] > 0
    assert {m["name"]: m["sha256"] for m in after["items"]} == {m["name"]: m["sha256"] for m in before["items"]}
    assert TOKEN
