"""What an artifact and its signature must be, checked without a server: schema limits, every dtype in
the generated configs, format detection and bad archives, and the sandboxed validator's real workers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2 as pb

from control_plane.errors import ApiError
from control_plane.schemas import MAX_RANK, Signature
from control_plane.staging import inspect_archive
from control_plane.validation import ArtifactRejected, ArtifactValidator, SandboxLimits
from model_repository.formats import DTYPES
from model_repository.manifest import ModelEntry, TensorSpec
from model_repository.packing import PackPlan, write_triton_model
from model_repository.triton_config import MAX_KIND_CHARS, PackSettings, pack_kind, parse_config

from . import artifact_builders as build


def error_fields(error: ValidationError) -> list[str]:
    return [".".join(str(p) for p in e["loc"]) for e in error.errors()]


# ---- signatures ------------------------------------------------------------------------------------
def test_every_triton_dtype_is_accepted_for_inputs_and_outputs():
    signature = Signature.model_validate(build.all_dtypes_signature())
    assert [s.dtype for s in signature.inputs] == list(DTYPES)
    assert [s.dtype for s in signature.outputs] == list(DTYPES)


@pytest.mark.parametrize(("change", "field", "words"), [
    (lambda s: s["inputs"][0].update(dtype="FP64"), "inputs.0.dtype", "FP32"),
    (lambda s: s["outputs"][0].update(dtype="STRING"), "outputs.0.dtype", "BOOL"),
    (lambda s: s["inputs"][0].update(shape=[-1] + [2] * MAX_RANK), "inputs.0.shape", "rank"),
    (lambda s: s["inputs"][0].update(shape=[-1, 2**21]), "inputs.0.shape", "between 1 and"),
    (lambda s: s["inputs"][0].update(shape=[-1, 2**15, 2**15]), "inputs.0.shape", "elements per batch item"),
    (lambda s: s["inputs"][0].update(shape=[4, 4]), "inputs.0.shape", "batch"),
    (lambda s: s["inputs"][0].update(value_range=[0, 10]), "inputs.0", "integer inputs"),
    (lambda s: s["inputs"][0].update(dtype="UINT8", value_range=[0, 300]), "inputs.0", "fit UINT8"),
    (lambda s: s["outputs"][0].update(dtype="INT64", value_range=[0, 3]), "outputs", "inputs only"),
])
def test_bad_signatures_name_the_field_and_the_fix(change, field, words):
    raw = build.linear_signature()
    change(raw)
    with pytest.raises(ValidationError) as caught:
        Signature.model_validate(raw)
    assert any(f.startswith(field) for f in error_fields(caught.value)), error_fields(caught.value)
    assert words in str(caught.value)


# ---- configs ---------------------------------------------------------------------------------------
def entry(signature: dict, fmt: str = "torchscript", ident: str = "m") -> ModelEntry:
    return ModelEntry(id=ident, architecture="custom", file=f"{ident}.bin", format=fmt, sha256="0" * 64,
                      bytes=1, parameters=0, inputs=[TensorSpec(**s) for s in signature["inputs"]],
                      outputs=[TensorSpec(**s) for s in signature["outputs"]])


def test_pack_configs_declare_every_dtype_for_inputs_and_outputs(tmp_path):
    member = entry(build.all_dtypes_signature(), "torch_export")
    (tmp_path / member.file).write_bytes(b"artifact")
    model_dir = write_triton_model(PackPlan("p", "custom", (member,)), tmp_path, tmp_path / "repo",
                                   PackSettings())
    config = parse_config((model_dir / "config.pbtxt").read_text())
    names = [pb.DataType.Name(t.data_type) for t in config.input]
    assert names == [f"TYPE_{d}" for d in DTYPES]
    assert [pb.DataType.Name(t.data_type) for t in config.output] == names
    members = json.loads((model_dir / "1" / "members.json").read_text())["members"]
    assert members["m"]["format"] == "torch_export" and members["m"]["file"] == "members/m.pt2"
    assert (model_dir / "1" / "members" / "m.pt2").read_bytes() == b"artifact"
    assert members["m"]["outputs"][7]["dtype"] == "BOOL"


def test_torch_export_members_are_never_given_to_the_libtorch_backend(tmp_path):
    for fmt, platform, artifact in (("torchscript", "pytorch_libtorch", "model.pt"),
                                    ("torch_export", "", "model.pt2")):
        member = entry(build.linear_signature(), fmt)
        (tmp_path / member.file).write_bytes(b"x")
        model_dir = write_triton_model(PackPlan(f"d-{fmt}", "custom", (member,), dedicated=True), tmp_path,
                                       tmp_path / "repo", PackSettings())
        gpu = parse_config((model_dir / "configs" / "gpu.pbtxt").read_text())
        assert gpu.platform == platform
        assert (model_dir / "1" / artifact).exists()


def test_pack_kind_separates_output_dtypes_and_stays_short():
    fp32 = build.linear_signature()
    fp16 = json.loads(json.dumps(fp32))
    fp16["outputs"][0]["dtype"] = "FP16"
    assert pack_kind(entry(fp32)) != pack_kind(entry(fp16))
    assert pack_kind(entry(fp32)) == "fp32r2-ofp32r2"
    wide = pack_kind(entry(build.all_dtypes_signature()))
    assert len(wide) <= MAX_KIND_CHARS and wide == pack_kind(entry(build.all_dtypes_signature()))


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_the_neuron_compile_path_loads_either_format_and_builds_inputs_of_every_dtype(tmp_path, fmt):
    import torch

    from model_repository.neuron_compile import example_tensors, load_member

    path = build.all_dtypes(tmp_path / f"m.{fmt}", fmt)
    example = example_tensors(entry(build.all_dtypes_signature(), fmt), batch=8)
    assert [str(t.dtype).removeprefix("torch.") for t in example] == [
        "float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool"]
    assert all(t.shape == (8, 3) for t in example)
    outputs = load_member(path, fmt)(*example)  # what torch_neuronx.trace is given
    assert [o.dtype for o in outputs] == [t.dtype for t in example]
    assert torch.equal(outputs[7], torch.logical_not(example[7]))


# ---- archives --------------------------------------------------------------------------------------
def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def inspect(path: Path, limit: int = 2**32):
    return inspect_archive(path, path.stat().st_size, limit)


def test_formats_are_detected_from_the_archive(tmp_path):
    assert inspect(build.linear(tmp_path / "a.bin")) == "torchscript"
    assert inspect(build.linear(tmp_path / "b.bin", "torch_export")) == "torch_export"


@pytest.mark.parametrize(("make", "status", "words"), [
    (lambda d: empty(d / "empty.pt"), 422, "empty"),
    (lambda d: build.truncated(build.linear(d / "ok.pt"), d / "half.pt"), 422, "truncated"),
    (lambda d: build.zip_bomb(d / "bomb.pt", 64 * 2**20), 422, "zip bomb"),
    (lambda d: build.plain_zip(d / "readme.zip"), 422, "neither TorchScript nor torch.export"),
    (lambda d: build.aoti_like(d / "compiled.pt2"), 422, "neither TorchScript nor torch.export"),
    (lambda d: build.torch_save_exploit(d / "evil.pt", d / "MARKER"), 422, "torch.save checkpoint"),
])
def test_bad_archives_are_refused_before_anything_loads_them(tmp_path, make, status, words):
    with pytest.raises(ApiError) as caught:
        inspect(make(tmp_path))
    assert caught.value.status_code == status and words in caught.value.message
    assert "torch.jit.save" in caught.value.message or "upload" in caught.value.message
    assert not (tmp_path / "MARKER").exists()


def test_an_archive_declaring_more_than_the_limit_is_413(tmp_path):
    path = build.linear(tmp_path / "m.pt")
    with pytest.raises(ApiError) as caught:
        inspect(path, limit=100)
    assert caught.value.status_code == 413 and "max_upload_bytes" in caught.value.message


# ---- the sandboxed validator (real worker processes) ----------------------------------------------
@pytest.fixture(scope="module")
def validator(tmp_path_factory):
    secrets = {"FLEET_API_TOKEN": "secret-token", "FLEET_TRITON_ADMIN_KEY": "admin-key",
               "AWS_SECRET_ACCESS_KEY": "aws-secret", "AWS_ACCESS_KEY_ID": "aws-id"}
    saved = {k: os.environ.get(k) for k in secrets}
    os.environ.update(secrets)
    try:
        checker = ArtifactValidator(1, SandboxLimits(timeout_s=120), tmp_path_factory.mktemp("validator"))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    yield checker
    checker.close()


def test_workers_run_without_secrets_and_without_the_host_network(validator):
    spare = validator._take()  # a started fork server, as the next validation would get it
    try:
        environment = Path(f"/proc/{spare.process.pid}/environ").read_bytes().decode()
        for secret in ("secret-token", "admin-key", "aws-secret", "FLEET_", "AWS_"):
            assert secret not in environment
        if validator.network_isolated:
            assert os.readlink(f"/proc/{spare.process.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    finally:
        validator._idle.put(spare)


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_a_model_with_every_dtype_validates_in_both_formats(validator, tmp_path, fmt):
    path = build.all_dtypes(tmp_path / "model", fmt)
    validator.validate(path, fmt, build.all_dtypes_signature())


def test_an_output_of_another_dtype_than_declared_is_refused(validator, tmp_path):
    signature = build.linear_signature()
    signature["outputs"][0]["dtype"] = "FP16"
    with pytest.raises(ArtifactRejected, match="OUTPUT__0 is float32, the signature declares FP16"):
        validator.validate(build.linear(tmp_path / "m.pt2", "torch_export"), "torch_export", signature)


def test_a_pickle_that_runs_code_inside_a_pt2_is_refused_without_running(validator, tmp_path):
    marker = tmp_path / "MARKER"
    evil = build.pt2_with_exploit(tmp_path / "evil.pt2", marker)
    with pytest.raises(ArtifactRejected, match="pickle"):
        validator.validate(evil, "torch_export", build.linear_signature())
    assert not marker.exists()
    # Why the validator hardens unpickling: torch 2.13's own loader runs this payload.
    subprocess.run([sys.executable, "-c", f"import torch\ntry: torch.export.load({str(evil)!r})\nexcept "
                    "Exception: pass"], capture_output=True, timeout=300, check=True)
    assert marker.exists(), "plain torch.export.load no longer runs pickled weights: the hardening may go"
