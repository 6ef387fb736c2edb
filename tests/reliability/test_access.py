"""Access: what an unauthenticated caller can learn, who may load and unload on Triton, where names and
S3 URIs may point. (Every /api/v1 route needing the token is tests/control_plane/test_api_e2e.py.)"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
import tritonclient.grpc as grpcclient
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from control_plane.schemas import NAME_PATTERN
from fleet.client import signature_of
from fleet.waiting import wait_for
from model_repository.manifest import Manifest
from model_repository.triton_admin import ADMIN_HEADER, TritonAdmin, TritonRefused

from .conftest import ADMIN_KEY, BUCKET, api, register, servable, url

EXISTING = "access-existing"
MISSING = "access-missing"


@pytest.fixture(scope="module")
def existing(stack_session, generated_models):
    entry = Manifest.read(generated_models).models[40]
    assert register(stack_session, entry, generated_models, name=EXISTING).status_code in (200, 201)
    return wait_for(lambda: servable(stack_session, EXISTING), timeout_s=180)


def _routes(stack) -> list[tuple[str, str]]:
    spec = requests.get(f"{stack.url}/openapi.json", timeout=10).json()
    return [(method.upper(), path) for path, ops in spec["paths"].items()
            if path.startswith("/api/v1") and "{name}" in path for method in ops]


@pytest.mark.slow
def test_auth_failures_are_identical_for_existing_and_missing_models(stack, existing):
    routes = _routes(stack)
    assert len(routes) >= 6
    for method, path in routes:
        for token in (None, "not-the-token"):
            answers = []
            for name in (EXISTING, MISSING):
                response = api(stack, token).request(method, stack.url + path.replace("{name}", name),
                                                     json={}, timeout=30)
                headers = {k: v for k, v in response.headers.items() if k.lower() not in ("date", "x-request-id")}
                answers.append((response.status_code, response.text, headers))
            assert answers[0] == answers[1], (method, path, token, answers)
            assert answers[0][0] == (401 if token is None else 403)
    # With the token the two differ, so the comparison above is not vacuous.
    assert api(stack).get(url(stack, f"/models/{EXISTING}")).status_code == 200
    assert api(stack).get(url(stack, f"/models/{MISSING}")).status_code == 404


@pytest.mark.slow
def test_triton_repository_api_refuses_load_and_unload_without_the_admin_key(stack, existing):
    pack = existing["pack"]
    server = next(s for s in stack.servers.values() if s.grpc_url == existing["endpoints"][0]["grpc_url"])
    other = next(s for s in stack.servers.values() if s is not server)
    loaded_before = (server.ready_models(), other.ready_models())  # replicas: the pack may be on both
    for key in (None, "wrong-key", ""):
        for target, action in ((server, "unload"), (server, "load"), (other, "load")):
            call = getattr(TritonAdmin(target.http_url, key), action)(pack, timeout_s=60)
            assert call.status in (401, 403), (action, key, call)
        with pytest.raises(TritonRefused) as refused:
            TritonAdmin(server.http_url, key).index(ready_only=False, timeout_s=10)
        assert refused.value.status in (401, 403)
    for key in (None, "wrong-key"):
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            with pytest.raises(InferenceServerException, match="(?i)unauthenticated|permission|restricted"):
                client.unload_model(pack, headers={ADMIN_HEADER: key} if key else None)
            with pytest.raises(InferenceServerException, match="(?i)unauthenticated|permission|restricted"):
                client.load_model(pack, headers={ADMIN_HEADER: key} if key else None)
        finally:
            client.close()
    # Nothing happened: every server still has exactly the packs it had.
    assert pack in server.ready_models() and (server.ready_models(), other.ready_models()) == loaded_before
    assert servable(stack, EXISTING) is not None
    assert pack in {m.name for m in TritonAdmin(server.http_url, ADMIN_KEY).index(ready_only=False)}


HOSTILE_NAMES = ["..", ".", "../x", "..%2F..%2Fetc", "%2e%2e", "a/../../b", "a\\..\\b", "/abs", "x\x00y",
                 ".hidden", "-dash", "UPPER", "ünïcode", "a b", "a" * 129, "~root", "$(id)", "a;b"]


@given(st.text(min_size=0, max_size=140))
@settings(max_examples=300, deadline=None)
def test_every_name_the_api_accepts_stays_inside_the_repository(name):
    """The registration pattern admits only names that resolve to one file inside a pack's folder."""
    if not re.fullmatch(NAME_PATTERN, name):
        return
    root = Path("/srv/repository/pack-0000/1/members")
    for relative in (f"{name}.pt", f"{name}/x"):
        resolved = (root / relative).resolve()
        assert resolved.parent == root or resolved.parent.parent == root, name
    assert "/" not in name and "\\" not in name and not name.startswith(".") and ".." != name


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_do_not_match_the_name_pattern(name):
    assert re.fullmatch(NAME_PATTERN, name) is None


@pytest.mark.slow
def test_hostile_names_are_refused_on_every_route_and_touch_nothing(stack, generated_models, existing):
    entry = Manifest.read(generated_models).models[41]
    session = api(stack)

    def tree() -> set[str]:  # everything the stack writes, less the S3 server's data, logs and the database
        return {str(p.relative_to(stack.root)) for p in stack.root.rglob("*")
                if "s3" not in p.parts and p.suffix != ".log" and not p.name.startswith("registry.db")}
    before = tree()
    for name in HOSTILE_NAMES:
        upload = register(stack, entry, generated_models, name=name)
        assert upload.status_code == 422, (name, upload.status_code, upload.text)
        from_s3 = session.post(url(stack, "/models/from-s3"), timeout=30, json={
            "name": name, "s3_uri": f"s3://{BUCKET}/uploads/x.pt", "signature": signature_of(entry)})
        assert from_s3.status_code == 422, (name, from_s3.text)
        server = session.post(url(stack, "/servers"), timeout=30, json={
            "name": name, "family": "cpu", "http_url": "http://127.0.0.1:9", "grpc_url": "127.0.0.1:9",
            "capacity_bytes": 2**30, "repository_path": "/tmp"})
        assert server.status_code == 422, (name, server.text)
        quoted = requests.utils.quote(name, safe="")
        for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/versions"), ("POST", "/load"),
                               ("POST", "/unload")):
            response = session.request(method, url(stack, f"/models/{quoted}{suffix}"), timeout=30)
            assert response.status_code in (404, 405), (name, method, suffix, response.status_code)
            assert response.json()["error"]["code"] in ("not_found", "method_not_allowed")
    after = tree()
    assert after == before, sorted(after ^ before)[:10]
    keys = [o["Key"] for o in stack.s3.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert all(".." not in k.split("/") and not k.startswith("/") for k in keys)
    assert api(stack).get(url(stack, "/models"), params={"per_page": 1000}).json()["total"] > 0
    assert all(re.fullmatch(NAME_PATTERN, m["name"]) for m in
               api(stack).get(url(stack, "/models"), params={"per_page": 1000}).json()["items"])


@pytest.mark.slow
def test_s3_uris_outside_the_configured_bucket_are_refused(stack, generated_models):
    entry = Manifest.read(generated_models).models[42]
    data = (generated_models / entry.file).read_bytes()
    client = stack.s3.client()
    client.create_bucket(Bucket=f"{BUCKET}-evil")
    client.put_object(Bucket=f"{BUCKET}-evil", Key="m.pt", Body=data)
    client.put_object(Bucket=BUCKET, Key="uploads/inside.pt", Body=data)
    outside = [f"s3://{BUCKET}-evil/m.pt", f"s3://{BUCKET[:-1]}/m.pt", f"s3://{BUCKET.upper()}/uploads/inside.pt",
               f"s3://{BUCKET}/../{BUCKET}-evil/m.pt", f"s3://{BUCKET}/uploads/../../{BUCKET}-evil/m.pt",
               f"s3://{BUCKET}", f"s3://{BUCKET}/", f"s3://user@{BUCKET}/uploads/inside.pt",
               f"s3://{BUCKET}-evil/{BUCKET}/uploads/inside.pt", f"s3://{BUCKET}:443/uploads/inside.pt"]
    for k, uri in enumerate(outside):
        name = f"outside-{k}"
        response = api(stack).post(url(stack, "/models/from-s3"), timeout=60, json={
            "name": name, "s3_uri": uri, "signature": signature_of(entry)})
        assert response.status_code == 400, (uri, response.status_code, response.text)
        assert response.json()["error"]["code"] == "s3_uri_outside_bucket", (uri, response.text)
        assert api(stack).get(url(stack, f"/models/{name}")).status_code == 404
    for uri in (f"http://{BUCKET}/uploads/inside.pt", f"file:///{BUCKET}/x", f"/{BUCKET}/uploads/inside.pt"):
        response = api(stack).post(url(stack, "/models/from-s3"), timeout=60, json={
            "name": "outside-scheme", "s3_uri": uri, "signature": signature_of(entry)})
        assert response.status_code == 422, (uri, response.text)
    inside = api(stack).post(url(stack, "/models/from-s3"), timeout=60, json={
        "name": "inside-bucket", "s3_uri": f"s3://{BUCKET}/uploads/inside.pt",
        "signature": signature_of(entry)})
    assert inside.status_code == 201, inside.text
