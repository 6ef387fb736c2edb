"""Registering artifacts through the real control plane (waitress, SQLite, SeaweedFS, sandboxed validator):
both formats, every dtype, streamed uploads, and every kind of bad input refused with nothing left behind."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import torch

from control_plane.registry import artifacts_prefix
from fleet.client import infer_at, register
from fleet.waiting import wait_for
from model_repository.contract import MODEL_ID_PARAMETER
from model_repository.formats import SUFFIX

from . import artifact_builders as build
from .conftest import TOKEN, stack_on

pytestmark = pytest.mark.slow

LIMIT = 128 * 2**20
VALIDATION_TIMEOUT_S = 10
PACK_RUNTIME = Path(__file__).resolve().parents[2] / "triton" / "backends" / "pack" / "model.py"


@pytest.fixture(scope="module")
def cp(tmp_path_factory, seaweed):
    """A control plane with no server yet (one test adds its own), large uploads and a short validation."""
    root = tmp_path_factory.mktemp("artifacts-cp")
    stack = stack_on(root, seaweed, "art", servers=(), max_upload_bytes=LIMIT, upload_staging_dir=root / "staging",
                     validation_timeout_s=VALIDATION_TIMEOUT_S, server_dead_after_s=3)
    with stack.start():
        yield stack


def post(cp, name: str, path: Path, signature: dict, family: str = "cpu") -> requests.Response:
    return register(cp.url, name, path, signature, token=TOKEN, family=family, timeout_s=300)


def s3_objects(cp, name: str) -> list[str]:
    """The model's artifacts in S3, relative to the registry's folder under the repository prefix."""
    folder = artifacts_prefix(cp.settings)
    listing = cp.s3.client().list_objects_v2(Bucket="models", Prefix=f"{folder}{name}/")
    return [o["Key"].removeprefix(folder) for o in listing.get("Contents", [])]


def assert_nothing_left(cp, name: str) -> None:
    assert cp.api().get(f"{cp.url}/api/v1/models/{name}").status_code == 404
    assert s3_objects(cp, name) == []
    wait_for(lambda: not any(cp.settings.staging_dir.iterdir()), timeout_s=10)


def assert_still_registers(cp, tmp_path: Path) -> None:
    """The API and the validator keep serving: a good registration right after succeeds."""
    name = f"after-{uuid.uuid4().hex[:8]}"
    good = build.linear(tmp_path / f"{name}.pt", seed=int(uuid.uuid4().int % 1000))
    response = post(cp, name, good, build.linear_signature())
    assert response.status_code == 201, response.text


# ---- both formats, every dtype ---------------------------------------------------------------------
def test_a_pt2_model_registers_with_its_format_and_a_torchscript_version_follows(cp, tmp_path):
    pt2 = build.linear(tmp_path / "m.pt2", "torch_export", seed=1)
    created = post(cp, "export-model", pt2, build.linear_signature())
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["format"] == "torch_export"
    assert body["sha256"] == hashlib.sha256(pt2.read_bytes()).hexdigest() and body["bytes"] == pt2.stat().st_size
    assert s3_objects(cp, "export-model") == [f"export-model/{body['sha256']}.pt2"]
    assert body["architecture"] is None and "split_min_bytes" in body["whole_artifact_reason"], "too small to split"
    assert post(cp, "export-model", pt2, build.linear_signature()).status_code == 200, "same content: no-op"

    script = build.linear(tmp_path / "m.pt", seed=2)
    with open(script, "rb") as artifact:
        version = cp.api().post(f"{cp.url}/api/v1/models/export-model/versions", timeout=300,
                                data={"signature": json.dumps(build.linear_signature())},
                                files={"artifact": ("m.pt", artifact)})
    assert version.status_code == 201, version.text
    assert version.json()["format"] == "torchscript" and version.json()["version"] == 2
    listed = cp.api().get(f"{cp.url}/api/v1/models/export-model/versions").json()["items"]
    assert [v["format"] for v in listed] == ["torch_export", "torchscript"]
    assert cp.api().get(f"{cp.url}/api/v1/models/export-model").json()["format"] == "torchscript"


def test_a_pt2_already_in_the_bucket_registers_from_s3(cp, tmp_path):
    pt2 = build.linear(tmp_path / "s3.pt2", "torch_export", seed=3)
    cp.s3.client().upload_file(str(pt2), "models", "uploads/s3-model.pt2")
    response = cp.api().post(f"{cp.url}/api/v1/models/from-s3", timeout=300, json={
        "name": "s3-model", "s3_uri": "s3://models/uploads/s3-model.pt2", "signature": build.linear_signature()})
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "torch_export"
    wait_for(lambda: not any(cp.settings.staging_dir.iterdir()), timeout_s=10)


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_a_signature_with_every_dtype_registers_and_validates(cp, tmp_path, fmt):
    path = build.all_dtypes(tmp_path / f"dtypes{SUFFIX[fmt]}", fmt)
    response = post(cp, f"all-dtypes-{fmt.replace('_', '-')}", path, build.all_dtypes_signature())
    assert response.status_code == 201, response.text
    declared = build.all_dtypes_signature()
    for kind in ("inputs", "outputs"):
        assert [s["dtype"] for s in response.json()["signature"][kind]] == [s["dtype"] for s in declared[kind]]


def test_signatures_with_unknown_dtypes_or_shapes_beyond_limits_are_422_naming_the_field(cp, tmp_path):
    path = build.linear(tmp_path / "m.pt")
    for change, field in ((lambda s: s["inputs"][0].update(dtype="FP64"), "dtype"),
                          (lambda s: s["inputs"][0].update(shape=[-1] + [2] * 8), "shape"),
                          (lambda s: s["outputs"][0].update(shape=[-1, 2**15, 2**15]), "shape")):
        signature = build.linear_signature()
        change(signature)
        response = post(cp, "bad-signature", path, signature)
        assert response.status_code == 422, response.text
        assert field in json.dumps(response.json()["error"]["details"])
        assert_nothing_left(cp, "bad-signature")


# ---- bad artifacts ---------------------------------------------------------------------------------
def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def noise(path: Path) -> Path:
    path.write_bytes(os.urandom(4096))
    return path


@pytest.mark.parametrize(("make", "status", "words"), [
    (lambda d: empty(d / "empty.pt"), 422, "empty"),
    (lambda d: noise(d / "noise.pt"), 422, "not a zip"),
    (lambda d: build.plain_zip(d / "readme.zip"), 422, "neither TorchScript nor torch.export"),
    (lambda d: build.truncated(build.linear(d / "ok.pt"), d / "half.pt"), 422, "truncated"),
    (lambda d: build.zip_bomb(d / "bomb.pt"), 422, "zip bomb"),
    (lambda d: build.torch_save_exploit(d / "evil.pt", d / "MARKER"), 422, "torch.save checkpoint"),
])
def test_archives_that_are_not_models_get_a_4xx_and_leave_nothing(cp, tmp_path, make, status, words):
    response = post(cp, "not-a-model", make(tmp_path), build.linear_signature())
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert words in message and ("torch.jit.save" in message or "upload" in message)
    assert not (tmp_path / "MARKER").exists()
    assert_nothing_left(cp, "not-a-model")


def test_a_pt2_whose_pickle_runs_code_is_refused_and_the_code_never_runs(cp, tmp_path):
    marker = tmp_path / "MARKER"
    response = post(cp, "evil-pt2", build.pt2_with_exploit(tmp_path / "evil.pt2", marker), build.linear_signature())
    assert response.status_code == 422, response.text
    assert "pickle" in response.json()["error"]["message"]
    assert not marker.exists()
    assert_nothing_left(cp, "evil-pt2")
    assert_still_registers(cp, tmp_path)


def test_a_hanging_model_is_refused_after_the_timeout_and_the_api_keeps_serving(cp, tmp_path):
    started = time.monotonic()
    response = post(cp, "hangs", build.scripted(build.Hang(), tmp_path / "hang.pt"), build.linear_signature())
    assert response.status_code == 422, response.text
    assert f"within {VALIDATION_TIMEOUT_S} s" in response.json()["error"]["message"]
    assert "validation_timeout_s" in response.json()["error"]["message"]
    assert time.monotonic() - started < VALIDATION_TIMEOUT_S + 60
    assert_nothing_left(cp, "hangs")
    assert_still_registers(cp, tmp_path)


def test_a_model_needing_more_memory_than_the_limit_is_refused(cp, tmp_path):
    response = post(cp, "greedy", build.scripted(build.Allocate(), tmp_path / "alloc.pt"), build.linear_signature())
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert "memory limit" in message and "validation_memory_factor" in message
    assert_nothing_left(cp, "greedy")
    assert_still_registers(cp, tmp_path)


def busy_worker(cp) -> psutil.Process | None:
    """The validator worker running a job: the validator gives a worker its memory limit with the job
    (spares waiting for one have none)."""
    for process in psutil.Process(cp.control_plane.process.pid).children(recursive=True):
        try:
            if "control_plane.validation_worker" in " ".join(process.cmdline()) and \
                    process.rlimit(psutil.RLIMIT_AS)[0] != psutil.RLIM_INFINITY:
                return process
        except psutil.NoSuchProcess:
            continue
    return None


def test_a_loader_that_crashes_gets_a_4xx_and_the_next_registration_succeeds(cp, tmp_path):
    path = build.scripted(build.Hang(), tmp_path / "crash.pt")
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(response=post(cp, "crashes", path,
                                                                         build.linear_signature())))
    thread.start()
    worker = wait_for(lambda: busy_worker(cp), timeout_s=VALIDATION_TIMEOUT_S - 1, interval_s=0.05)
    worker.send_signal(signal.SIGABRT)  # what os.abort() inside a loader does
    thread.join(120)
    response = result["response"]
    assert response.status_code == 422, response.text
    assert "crashed the validator process (SIGABRT" in response.json()["error"]["message"]
    assert_nothing_left(cp, "crashes")
    assert_still_registers(cp, tmp_path)


# ---- size --------------------------------------------------------------------------------------------
def test_a_body_over_the_limit_is_413_before_it_is_sent(cp):
    host, port = cp.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/api/v1/models")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", str(LIMIT + 64 * 2**20))
    connection.endheaders(b"--x\r\n")  # a few bytes of a body that would be 192 MiB
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 413
    assert body["error"]["code"] == "payload_too_large"
    assert str(LIMIT) in body["error"]["message"] and "max_upload_bytes" in body["error"]["message"]


def test_an_s3_object_over_the_limit_is_413_before_it_is_downloaded(cp, tmp_path):
    sparse = tmp_path / "huge.pt"
    with open(sparse, "wb") as handle:
        handle.truncate(LIMIT + 1)
    cp.s3.client().upload_file(str(sparse), "models", "uploads/huge.pt")
    response = cp.api().post(f"{cp.url}/api/v1/models/from-s3", timeout=300, json={
        "name": "huge", "s3_uri": "s3://models/uploads/huge.pt", "signature": build.linear_signature()})
    assert response.status_code == 413, response.text
    assert str(LIMIT) in response.json()["error"]["message"]
    assert "max_upload_bytes" in response.json()["error"]["message"]
    assert_nothing_left(cp, "huge")


def vm_hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_100_mb_upload_streams_through_the_web_process(cp, tmp_path):
    assert_still_registers(cp, tmp_path)  # warm: the first request of each kind allocates for itself
    big = build.linear(tmp_path / "big.pt", features=5120, classes=5120)
    size = big.stat().st_size
    assert size >= 100 * 10**6
    before = vm_hwm_bytes(cp.control_plane.process.pid)
    signature = build.linear_signature(5120, 5120)
    response = post(cp, "big-model", big, signature)
    assert response.status_code == 201, response.text
    grown = vm_hwm_bytes(cp.control_plane.process.pid) - before
    print(f"artifact {size / 2**20:.0f} MiB; control-plane peak RSS grew {grown / 2**20:.1f} MiB")
    assert grown < size / 4, f"peak RSS grew {grown} bytes for a {size}-byte artifact"
    digest = hashlib.sha256()
    with open(big, "rb") as source:
        while chunk := source.read(2**20):
            digest.update(chunk)
    assert response.json()["sha256"] == digest.hexdigest()
    folder = artifacts_prefix(cp.settings)
    key = next(k for k in s3_objects(cp, "big-model") if k.endswith(".pt"))  # beside it: the split's weights
    head = cp.s3.client().head_object(Bucket="models", Key=folder + key)
    assert head["ContentLength"] == size and head["Metadata"]["sha256"] == digest.hexdigest()


# ---- serving ---------------------------------------------------------------------------------------
@pytest.mark.skipif("torch.export.load" not in PACK_RUNTIME.read_text(),
                    reason="the pack runtime loads .pt2 members once branch runtime lands")
def test_a_pt2_model_serves_through_a_pack_on_a_real_tritonserver(cp, tmp_path):
    server = cp.start_server("pt2-server")
    repo = server.repository
    try:
        added = cp.api().post(f"{cp.url}/api/v1/servers", json={
            "name": "pt2-server", "family": "cpu", "http_url": server.http_url, "grpc_url": server.grpc_url,
            "capacity_bytes": 4 * 2**30, "repository_path": str(repo)})
        assert added.status_code == 201, added.text
        pt2 = build.linear(tmp_path / "served.pt2", "torch_export", seed=9)
        assert post(cp, "served-pt2", pt2, build.linear_signature()).status_code == 201
        model = wait_for(lambda: (m := cp.api().get(f"{cp.url}/api/v1/models/served-pt2").json())["status"]
                         == "servable" and m, timeout_s=120)
        x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        got = infer_at(model["endpoints"][0]["grpc_url"], model["pack"], {"INPUT__0": x},
                       model["request_parameters"][MODEL_ID_PARAMETER]).as_numpy("OUTPUT__0")
        expected = torch.export.load(str(pt2)).module()(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    finally:
        cp.api().delete(f"{cp.url}/api/v1/servers/pt2-server")
        server.stop()
