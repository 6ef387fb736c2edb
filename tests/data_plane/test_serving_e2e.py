"""End to end on the real parts: generate >= 500 models, upload to SeaweedFS, sync, serve with the real
tritonserver, and infer over gRPC (KServe v2)."""
from __future__ import annotations

import concurrent.futures
import json

import numpy as np
import psutil
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from fleet.client import infer_at
from fleet.triton_server import TritonServer
from model_repository.artifacts import canonical_torchscript, sha256_hex
from model_repository.generator import example_inputs, generate
from model_repository.packing import build_repository
from model_repository.s3_sync import sync, upload
from model_repository.triton_admin import TritonAdmin

pytestmark = pytest.mark.slow
ADMIN_KEY = "test-admin-key"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, seaweed):
    """510 models in 6 packs, uploaded, synced into a server's repository, served and loaded."""
    root = tmp_path_factory.mktemp("e2e")
    manifest = generate(510, root / "models", seed=3)
    plans = build_repository(root / "models", root / "build", pack_size=100)
    uri = "s3://models/e2e"
    upload(root / "build", uri, seaweed.client())
    assert sync(uri, root / "server-repo", seaweed.client()).ok
    with TritonServer(root / "server-repo", admin_key=ADMIN_KEY) as server:
        for plan in plans:
            server.load(plan.name)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        yield {"root": root, "manifest": manifest, "plans": plans, "server": server, "client": client,
               "uri": uri}
        client.close()


def pack_of(fleet, member_id: str) -> str:
    return next(p.name for p in fleet["plans"] if any(m.id == member_id for m in p.members))


def infer(fleet, member_id: str, array: np.ndarray, dtype: str | None = None):
    entry = fleet["manifest"].by_id()[member_id]
    result = infer_at(fleet["server"].grpc_url, pack_of(fleet, member_id), {"INPUT__0": array}, member_id,
                      datatypes={"INPUT__0": dtype or entry.inputs[0].dtype}, client=fleet["client"])
    return result.as_numpy("OUTPUT__0")


def eager(fleet, member_id: str, array: np.ndarray) -> np.ndarray:
    entry = fleet["manifest"].by_id()[member_id]
    module = torch.jit.load(str(fleet["root"] / "models" / entry.file))
    with torch.inference_mode():
        return module(torch.from_numpy(array)).numpy()


def test_all_packs_are_loaded(fleet):
    assert fleet["server"].ready_models() == {p.name for p in fleet["plans"]}
    assert len(fleet["manifest"].models) >= 500


@pytest.mark.parametrize("architecture", ["mlp", "cnn", "text"])
def test_grpc_outputs_equal_eager_torch_for_a_sample_of_members(fleet, architecture):
    members = [m for m in fleet["manifest"].models if m.architecture == architecture]
    sample = members[:: max(1, len(members) // 6)][:6]
    assert len({pack_of(fleet, m.id) for m in sample}) > 1, "the sample should span packs"
    for entry in sample:
        (x,) = example_inputs(entry, batch=5, seed=11)
        np.testing.assert_allclose(infer(fleet, entry.id, x), eager(fleet, entry.id, x), rtol=1e-6, atol=1e-6)


def test_an_unknown_member_gets_an_error_that_says_where_to_look(fleet):
    entry = fleet["manifest"].models[0]
    (x,) = example_inputs(entry, batch=1)
    tensor = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="model 'no-such-model' is not in pack"):
        fleet["client"].infer(pack_of(fleet, entry.id), [tensor], parameters={"model_id": "no-such-model"})


def test_a_request_without_model_id_to_a_pack_is_told_to_name_one(fleet):
    entry = fleet["manifest"].models[0]
    (x,) = example_inputs(entry, batch=1)
    tensor = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="request parameter 'model_id'"):
        fleet["client"].infer(pack_of(fleet, entry.id), [tensor])


def test_a_wrong_shape_is_reported_with_the_expected_shape(fleet):
    entry = next(m for m in fleet["manifest"].models if m.architecture == "mlp")
    features = entry.inputs[0].shape[1]
    expected = rf"must have shape \[batch, {features}\], got \[2, {features + 1}\]"
    with pytest.raises(InferenceServerException, match=expected):
        infer(fleet, entry.id, np.zeros((2, features + 1), np.float32))


def test_a_wrong_dtype_is_rejected_before_it_reaches_the_model(fleet):
    entry = next(m for m in fleet["manifest"].models if m.architecture == "mlp")
    with pytest.raises(InferenceServerException, match="data-type is 'INT64'.*expects 'FP32'"):
        infer(fleet, entry.id, np.zeros((1, entry.inputs[0].shape[1]), np.int64), dtype="INT64")


def test_token_ids_outside_the_vocabulary_and_nan_inputs_are_refused(fleet):
    text = next(m for m in fleet["manifest"].models if m.architecture == "text")
    high = text.inputs[0].value_range[1]
    with pytest.raises(InferenceServerException, match=rf"values must lie in \[0, {high}\)"):
        infer(fleet, text.id, np.full((1, text.inputs[0].shape[1]), high, np.int64))
    mlp = next(m for m in fleet["manifest"].models if m.architecture == "mlp")
    with pytest.raises(InferenceServerException, match="NaN"):
        infer(fleet, mlp.id, np.full((1, mlp.inputs[0].shape[1]), np.nan, np.float32))


def test_bad_requests_do_not_disturb_good_ones_batched_with_them(fleet):
    """Concurrent requests to one pack are batched together by Triton; only the bad ones fail."""
    members = [m for m in fleet["plans"][0].members][:8]
    good = {m.id: example_inputs(m, batch=2, seed=5)[0] for m in members}
    # Same rank as the pack accepts, but a size this member does not take: the pack runtime must reject it.
    bad = {i: np.zeros((*x.shape[:-1], x.shape[-1] + 1), x.dtype) for i, x in good.items()}

    def call(kind_and_id):
        kind, ident = kind_and_id
        try:
            return kind, ident, infer(fleet, ident, good[ident] if kind == "good" else bad[ident])
        except InferenceServerException as error:
            return kind, ident, error

    work = [("good", m.id) for m in members] * 4 + [("bad", m.id) for m in members] * 2
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(call, work))
    for kind, ident, outcome in outcomes:
        if kind == "good":
            np.testing.assert_allclose(outcome, eager(fleet, ident, good[ident]), rtol=1e-6, atol=1e-6)
        else:
            assert isinstance(outcome, InferenceServerException) and "must have shape" in str(outcome)


def test_repository_api_needs_the_admin_key(fleet):
    server = fleet["server"]
    name = fleet["plans"][0].name
    denied = TritonAdmin(server.http_url).unload(name, timeout_s=10)  # no key
    assert denied.status in (401, 403) or "triton-admin-key" in (denied.error or "")
    assert name in server.ready_models(), "the unauthenticated unload must not have happened"


def test_per_member_metrics_are_exported_on_the_metrics_port(fleet):
    entry = fleet["plans"][1].members[0]
    (x,) = example_inputs(entry, batch=1)
    infer(fleet, entry.id, x)
    import time

    time.sleep(1.1)  # counters are flushed at most once a second, on the next request
    infer(fleet, entry.id, x)
    text = fleet["server"].metrics()
    labels = f'member="{entry.id}",pack="{fleet["plans"][1].name}"'
    for family in ("fleet_member_requests_total", "fleet_member_loads_total",
                   "fleet_member_compute_duration_us_total", "fleet_member_resident_bytes"):
        line = next((line for line in text.splitlines() if line.startswith(family + "{" + labels)), None)
        assert line is not None, f"{family} missing for {entry.id}"
        assert float(line.rsplit(" ", 1)[1]) > 0
    assert "fleet_pack_resident_bytes" in text


def test_changing_one_model_moves_only_it_and_a_reload_serves_the_new_weights(fleet, seaweed):
    root, manifest = fleet["root"], fleet["manifest"]
    entry = next(m for m in manifest.models if m.architecture == "cnn")
    (x,) = example_inputs(entry, batch=2, seed=1)
    before = infer(fleet, entry.id, x)
    # A new version of one user model: same signature, other weights.
    module = torch.jit.load(str(root / "models" / entry.file))
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.5)
    data = canonical_torchscript(module)
    (root / "models" / entry.file).write_bytes(data)
    updated = manifest.model_copy(deep=True)
    changed = updated.by_id()[entry.id]
    changed.sha256, changed.bytes = sha256_hex(data), len(data)
    updated.write(root / "models")
    build_repository(root / "models", root / "build", pack_size=100)

    pack = pack_of(fleet, entry.id)
    moved = upload(root / "build", fleet["uri"], seaweed.client())
    assert sorted(moved) == sorted([f"{pack}/1/members/{entry.id}.pt", f"{pack}/1/members.json"])
    report = sync(fleet["uri"], root / "server-repo", seaweed.client())
    assert sorted(report.downloaded) == sorted(moved) and report.changed_models == {pack}
    fleet["server"].load(pack)  # Triton reloads a loaded model on a repeated load request
    after = infer(fleet, entry.id, x)
    expected = module(torch.from_numpy(x)).detach().numpy()
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, expected, rtol=1e-6, atol=1e-6)
    members = json.loads((root / "server-repo" / pack / "1" / "members.json").read_text())
    assert members["members"][entry.id]["sha256"] == changed.sha256


def test_stopping_the_server_leaves_no_stub_processes(tmp_path, generated_models):
    build_repository(generated_models, tmp_path / "repo", pack_size=30)
    server = TritonServer(tmp_path / "repo")
    with server:
        server.load("mlp-pack-0000")
        pid = server.process.pid
        stubs = [p for p in psutil.Process(pid).children(recursive=True)]
        assert stubs, "a loaded Python-backend model runs in a stub process"
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in stubs)
