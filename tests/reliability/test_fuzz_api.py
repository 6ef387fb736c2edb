"""Hostile input: the REST API fuzzed from its own OpenAPI document, and fuzzed tensors sent to a real pack.

The API fuzzer is a hypothesis strategy built from /openapi.json (schemathesis was not used: one strategy
per JSON-schema construct the document uses is enough here and adds no dependency). Each example picks
an operation and sends schema-shaped values, mutated values or junk, as JSON, form fields or raw bytes.
The rule: never a 500; a 5xx is only the documented 503 for a dead dependency.
Operations that start background work (POST /loadtests, POST /deployments) always get one extra,
forbidden property, so they are exercised up to validation only; POST /servers health-checks
127.0.0.1:9 instead of fuzzed hosts (no DNS lookups of random names).
"""
from __future__ import annotations

import collections
import json
import threading
import time
import urllib.parse

import numpy as np
import psutil
import pytest
import requests
import torch
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from fleet.waiting import wait_for
from model_repository.generator import example_inputs
from model_repository.manifest import Manifest

from .conftest import TOKEN, infer, register, servable

pytestmark = pytest.mark.slow
ALLOWED_503 = {"server_unreachable", "object_store_unavailable"}
JOB_STARTERS = {("post", "/api/v1/loadtests"), ("post", "/api/v1/deployments")}

junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4), max_leaves=12)


def from_schema(schema: dict, spec: dict, depth: int = 0) -> st.SearchStrategy:
    """Values that follow a JSON schema, most of the time; junk otherwise (mutations)."""
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if depth > 4:
        return junk
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return st.one_of([from_schema(s, spec, depth + 1) for s in schema[key]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties", {})
        required = set(schema.get("required", []))
        fields = {name: from_schema(sub, spec, depth + 1) for name, sub in properties.items()}
        optional = {k: v for k, v in fields.items() if k not in required}
        return st.fixed_dictionaries({k: v for k, v in fields.items() if k in required}, optional=optional)
    if kind == "array":
        items = schema.get("items", {})
        if "prefixItems" in schema:
            return st.tuples(*[from_schema(s, spec, depth + 1) for s in schema["prefixItems"]]).map(list)
        return st.lists(from_schema(items, spec, depth + 1), min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 4), 4))
    if kind == "integer":
        return st.integers(schema.get("minimum", -2**40), schema.get("maximum", 2**40)) | st.integers()
    if kind == "number":
        return st.floats(allow_nan=False) | st.integers()
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: len(s) < 200) | st.text()
        return st.text(max_size=40)
    return junk


def request_strategy(spec: dict) -> st.SearchStrategy:
    operations = [(method, path, op) for path, ops in spec["paths"].items() if path.startswith("/api/v1")
                  for method, op in ops.items()]

    @st.composite
    def one(draw):
        method, path, op = draw(st.sampled_from(operations))
        concrete = path
        for parameter in [p for p in op.get("parameters", []) if p["in"] == "path"]:
            value = draw(st.text(min_size=1, max_size=30) | st.integers(-5, 2**63).map(str)
                         | st.sampled_from(["..", ".", "%2e%2e", "../servers", "%2F"]))
            concrete = concrete.replace("{" + parameter["name"] + "}", requests.utils.quote(value, safe="%"))
        query = {p["name"]: draw(from_schema(p.get("schema", {}), spec).map(str) | st.text(max_size=10))
                 for p in op.get("parameters", []) if p["in"] == "query" and draw(st.booleans())}
        body: dict = {}
        content = op.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            value = draw(from_schema(content["application/json"]["schema"], spec) | junk)
            if (method, path) in JOB_STARTERS:
                value = {**value, "__fuzz__": 1} if isinstance(value, dict) else {"__fuzz__": value}
            if isinstance(value, dict) and "http_url" in value:
                value["http_url"] = "http://127.0.0.1:9"
            text = json.dumps(value)  # NaN and Infinity come out as the non-JSON tokens Python writes
            body = {"data": draw(st.sampled_from([text, text[:-1] or "{"])).encode(),
                    "headers": {"Content-Type": "application/json"}}
        elif content:  # multipart upload
            schema = next(iter(content.values()))["schema"]
            schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
            fields = {name: draw(st.text(max_size=60) | st.sampled_from(
                ['{"inputs": [], "outputs": []}', "cpu", "gpu", "x" * 300]))
                for name in schema.get("properties", {}) if name != "artifact" and draw(st.booleans())}
            files = {"artifact": ("a.pt", draw(st.binary(max_size=256)))} if draw(st.booleans()) else None
            body = {"data": fields, "files": files}
        return method.upper(), concrete, query, body

    return one()


def test_the_api_fuzzed_from_its_openapi_document_never_answers_500(stack):
    base = stack.url
    spec = requests.get(f"{base}/openapi.json", timeout=10).json()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    protected = {"triton-a", "triton-b"}
    seen: dict[int, int] = {}

    @given(request_strategy(spec))
    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(call):
        method, path, query, body = call
        if any(f"/servers/{name}" in urllib.parse.unquote(path) for name in protected):
            return  # the fuzzer must not remove the stack's own servers (it may try: "triton%2Da")
        response = session.request(method, base + path, params=query, timeout=30, **body)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code != 500, (method, path, query, body, response.text[:300])
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"code", "message", "details"}, response.text
            if response.status_code >= 500:
                assert response.status_code == 503 and error["code"] in ALLOWED_503, (method, path, response.text)

    # Found by this fuzzer (were 500s: integers beyond SQL BIGINT reached SQLite).
    for path in ("/api/v1/deployments/9223372036854775808", "/api/v1/loadtests/99999999999999999999"):
        assert session.get(base + path, timeout=10).status_code == 404
    live = next(iter(stack.servers.values()))
    huge = session.post(f"{base}/api/v1/servers", timeout=30, json={
        "name": "huge-capacity", "family": "cpu", "http_url": live.http_url, "grpc_url": live.grpc_url,
        "capacity_bytes": 2**70})
    assert huge.status_code == 422, huge.text

    started = time.monotonic()
    check()
    assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
    servers = session.get(f"{base}/api/v1/servers", timeout=10).json()["items"]
    assert {s["name"] for s in servers} >= protected
    assert stack.control_plane.process.poll() is None
    print(f"\nAPI fuzz: {sum(seen.values())} requests in {time.monotonic() - started:.0f} s, statuses {seen}")


# ---- tensors ----------------------------------------------------------------------------------------
def _stub_pids(stack) -> set[int]:
    pids = set()
    for server in stack.servers.values():
        pids |= {p.pid for p in psutil.Process(server.process.pid).children(recursive=True)}
    return pids


def _settled_stub_pids(stack, quiet_s: float = 2.0, timeout_s: float = 60.0) -> set[int]:
    """Stub pids once none has come or gone for `quiet_s`: a pack reloaded for a new member starts its new
    stub before Triton retires the old one a second or so later, which is not a crash."""
    deadline = time.monotonic() + timeout_s
    pids, since = _stub_pids(stack), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = _stub_pids(stack)
        if now != pids:
            pids, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return pids
    raise AssertionError(f"stub processes kept changing for {timeout_s:.0f} s")


def test_fuzzed_tensors_never_crash_a_pack_or_disturb_concurrent_good_requests(stack, generated_models):
    models = Manifest.read(generated_models).models
    mlp = next(m for m in models if m.architecture == "mlp")
    text = next(m for m in models if m.architecture == "text")
    for entry in (mlp, text):
        assert register(stack, entry, generated_models, name=f"fuzz-{entry.id}").status_code in (200, 201)
    target = wait_for(lambda: servable(stack, f"fuzz-{mlp.id}"))
    wait_for(lambda: servable(stack, f"fuzz-{text.id}"))
    grpc_url, pack = target["endpoints"][0]["grpc_url"], target["pack"]
    stubs_before = _settled_stub_pids(stack)

    (good_x,) = example_inputs(mlp, batch=3, seed=2)
    expected = torch.jit.load(str(generated_models / mlp.file))(torch.from_numpy(good_x)).detach().numpy()
    good_client = grpcclient.InferenceServerClient(grpc_url)
    stop, good = threading.Event(), {"ok": 0, "bad": []}

    def good_traffic():
        while not stop.is_set():
            tensor = grpcclient.InferInput("INPUT__0", list(good_x.shape), "FP32")
            tensor.set_data_from_numpy(good_x)
            try:
                out = good_client.infer(pack, [tensor], parameters={"model_id": f"fuzz-{mlp.id}"}).as_numpy("OUTPUT__0")
                if np.allclose(out, expected, rtol=1e-5, atol=1e-5):
                    good["ok"] += 1
                else:
                    good["bad"].append("wrong values")
            except InferenceServerException as error:
                good["bad"].append(str(error)[:200])
            time.sleep(0.01)

    features = mlp.inputs[0].shape[1]
    dims = st.one_of(st.just(features), st.integers(0, 70))
    shapes = st.one_of(st.tuples(st.integers(0, 64), st.just(features)).map(list),
                       st.tuples(st.integers(0, 300), dims).map(list),
                       st.lists(st.integers(0, 9), min_size=1, max_size=4),
                       st.sampled_from([[65536, features], [0, features], [1, 0], [1]]))
    fills = st.sampled_from(["zeros", "nan", "inf", "-inf", "huge", "random", "tiny"])
    dtypes = st.just("FP32") | st.sampled_from(["FP32", "INT64", "FP64", "INT8", "BYTES", "BOOL", "FP16"])
    ids = st.just(f"fuzz-{mlp.id}") | st.sampled_from([f"fuzz-{text.id}", "", "../etc", "x" * 5000, None, 7])
    outcomes = {"ok": 0, "refused": 0}
    reasons: collections.Counter = collections.Counter()

    # Excluded: batch 0 with another dimension 0 (no bytes at all): tritonserver never answers such a
    # request; test_a_request_with_no_bytes_and_batch_0_hangs_alone below pins that down separately.
    shapes = shapes.filter(lambda shape: not (shape[0] == 0 and 0 in shape[1:]))

    @given(shapes, fills, dtypes, ids)
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(shape, fill, dtype, member):
        numpy_type = {"FP32": np.float32, "INT64": np.int64, "FP64": np.float64, "INT8": np.int8,
                      "BYTES": np.object_, "BOOL": np.bool_, "FP16": np.float16}[dtype]
        if dtype == "BYTES":
            x = np.full(shape, b"\xff\x00", dtype=np.object_)
        else:
            value = {"zeros": 0, "nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": 1e30, "tiny": 1e-45,
                     "random": 0.5}[fill]
            with np.errstate(all="ignore"):
                x = np.full(shape, value).astype(numpy_type) if dtype in ("FP32", "FP64", "FP16") \
                    else np.full(shape, 0 if fill in ("nan", "inf", "-inf") else 3).astype(numpy_type)
        client = grpcclient.InferenceServerClient(grpc_url)
        try:
            tensor = grpcclient.InferInput("INPUT__0", list(x.shape), dtype)
            tensor.set_data_from_numpy(x)
            parameters = {} if member is None else {"model_id": member}
            out = client.infer(pack, [tensor], parameters=parameters, client_timeout=20).as_numpy("OUTPUT__0")
            assert out.shape[0] == x.shape[0]
            outcomes["ok"] += 1
        except InferenceServerException as error:
            assert "not healthy" not in str(error), str(error)
            outcomes["refused"] += 1
            reasons[str(error).split("'")[0][:40]] += 1
        finally:
            client.close()

    thread = threading.Thread(target=good_traffic, daemon=True)
    thread.start()
    try:
        check()
    finally:
        stop.set()
        thread.join(timeout=30)
        good_client.close()
    assert _stub_pids(stack) >= stubs_before, "a stub process died"
    assert good["bad"] == [] and good["ok"] > 20, (good["ok"], good["bad"][:3])
    np.testing.assert_allclose(infer(grpc_url, pack, f"fuzz-{mlp.id}", good_x), expected, rtol=1e-5, atol=1e-5)
    print(f"\ntensor fuzz: {outcomes['ok'] + outcomes['refused']} fuzzed requests ({outcomes['refused']} refused "
          f"with an error, {outcomes['ok']} answered); {good['ok']} concurrent good requests, 0 disturbed; "
          f"refusals: {dict(reasons.most_common(6))}")


def test_a_request_with_no_bytes_and_batch_0_hangs_alone(stack, generated_models):
    """Found by the fuzzer: INPUT__0 of shape [0, 0] passes Triton's checks (0 bytes expected, 0 sent) and
    is never answered by tritonserver 2.51 (the client's deadline ends it). It must not take the pack
    down: requests sent after it are answered, and no stub dies."""
    mlp = next(m for m in Manifest.read(generated_models).models if m.architecture == "mlp")
    assert register(stack, mlp, generated_models, name=f"fuzz-{mlp.id}").status_code in (200, 201)
    target = wait_for(lambda: servable(stack, f"fuzz-{mlp.id}"))
    grpc_url, pack = target["endpoints"][0]["grpc_url"], target["pack"]
    stubs_before = _settled_stub_pids(stack)
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        tensor = grpcclient.InferInput("INPUT__0", [0, 0], "FP32")
        tensor.set_data_from_numpy(np.zeros((0, 0), np.float32))
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as raised:
            client.infer(pack, [tensor], parameters={"model_id": f"fuzz-{mlp.id}"}, client_timeout=3)
        waited = time.monotonic() - started
    finally:
        client.close()
    (x,) = example_inputs(mlp, batch=2, seed=4)
    expected = torch.jit.load(str(generated_models / mlp.file))(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(infer(grpc_url, pack, f"fuzz-{mlp.id}", x), expected, rtol=1e-5, atol=1e-5)
    assert _stub_pids(stack) >= stubs_before
    print(f"\nbatch-0 empty tensor: {str(raised.value)[:60]!r} after {waited:.1f} s; the pack kept serving")
