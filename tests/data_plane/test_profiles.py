"""`fleet generate --profile`: real-size BERT- and ResNet-shaped models, unique, reproducible, both formats."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fleet.cli import main as fleet
from fleet.commands import PROFILE_NAMES
from model_repository import profiles
from model_repository.architectures import BertClassifier, ResNet50
from model_repository.formats import detect_format
from model_repository.generator import example_inputs, generate_profile
from model_repository.manifest import Manifest


@pytest.fixture(scope="module")
def real_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two bert-mini and one resnet50 per format (the two big kinds a test can afford: ~20 s in all)."""
    root = tmp_path_factory.mktemp("profiles")
    out = {}
    for fmt in ("torchscript", "torch_export"):
        for profile, count in (("bert-mini", 2 if fmt == "torchscript" else 1), ("resnet50", 1)):
            out[f"{fmt}/{profile}"] = root / fmt / profile
            generate_profile(out[f"{fmt}/{profile}"], count, profile, seed=3, fmt=fmt, workers=1)
    return out


def _load(path: Path, fmt: str):
    return torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
@pytest.mark.parametrize("profile", ["bert-mini", "resnet50"])
def test_real_size_models_load_in_their_format_and_answer_with_the_signatures_shapes(real_models, fmt, profile):
    manifest = Manifest.read(real_models[f"{fmt}/{profile}"])
    entry = manifest.models[0]
    path = real_models[f"{fmt}/{profile}"] / entry.file
    assert detect_format(path) == fmt == entry.format
    assert profiles.MIN_BYTES[profile] <= entry.bytes <= profiles.MAX_BYTES[profile]
    module = _load(path, fmt)
    for batch in (1, 3):
        (x,) = example_inputs(entry, batch=batch)
        with torch.no_grad():
            y = module(torch.from_numpy(x))
        assert list(y.shape) == [batch, *entry.outputs[0].shape[1:]]
        assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_bert_signature_is_token_ids_over_the_vocabulary(real_models):
    entry = Manifest.read(real_models["torchscript/bert-mini"]).models[0]
    assert entry.architecture == "bert" and entry.id == "bert-mini-00000"
    (spec,) = entry.inputs
    assert (spec.dtype, spec.shape, tuple(spec.value_range)) == ("INT64", [-1, 128], (0, profiles.VOCAB))


def test_every_real_model_has_its_own_weights(real_models):
    first, second = Manifest.read(real_models["torchscript/bert-mini"]).models
    assert first.sha256 != second.sha256
    a = torch.jit.load(str(real_models["torchscript/bert-mini"] / first.file)).state_dict()
    b = torch.jit.load(str(real_models["torchscript/bert-mini"] / second.file)).state_dict()
    assert not torch.equal(a["words.weight"], b["words.weight"])


def test_same_seed_gives_the_same_sha256_in_another_process_and_folder(real_models, tmp_path):
    """Another interpreter with another string-hash seed, another folder: byte-identical artifacts."""
    script = ("import sys; from model_repository.generator import generate_profile; "
              "m = generate_profile(sys.argv[1], 2, 'bert-mini', seed=3, workers=1); "
              "print(' '.join(e.sha256 for e in m.models))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONSAFEPATH": "1"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "again")], env=env, check=True,
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    expected = [e.sha256 for e in Manifest.read(real_models["torchscript/bert-mini"]).models]
    assert done.stdout.split() == expected


def test_same_seed_gives_the_same_sha256_after_the_process_compiled_other_models(real_models, tmp_path):
    """Process-global torch state must not reach the artifacts: TorchScript's type-name counter (other
    models traced or scripted earlier in this process), the global generator, thread count, default dtype."""
    generate_profile(tmp_path / "other", 1, "bert-mini", seed=11, workers=1)
    torch.jit.script(BertClassifier(64, 16, 1, 2, 32, 8, 2))
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.manual_seed(12345)
    torch.set_default_dtype(torch.float64)
    try:
        again = generate_profile(tmp_path / "again", 2, "bert-mini", seed=3, workers=1)
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
    expected = [e.sha256 for e in Manifest.read(real_models["torchscript/bert-mini"]).models]
    assert [e.sha256 for e in again.models] == expected
    module = torch.jit.load(str(tmp_path / "again" / again.models[1].file))
    assert "___torch_mangle" not in module.original_name and module.original_name == "BertClassifier"


def test_torch_export_artifacts_carry_no_local_paths(real_models):
    entry = Manifest.read(real_models["torch_export/bert-mini"]).models[0]
    data = (real_models["torch_export/bert-mini"] / entry.file).read_bytes()
    assert str(Path(__file__).resolve().parents[2]).encode() not in data


@pytest.mark.parametrize("kind", ["bert-mini", "bert-small", "bert-base", "resnet50"])
def test_each_kind_has_the_documented_size_without_building_it(kind):
    """Parameter bytes (built on the meta device, no memory) fall within the profile's documented range."""
    with torch.device("meta"):
        if kind == "resnet50":
            module = ResNet50(1000)
        else:
            s = profiles.BERT_SHAPES[kind]
            module = BertClassifier(profiles.VOCAB, s.dim, s.layers, s.heads, s.ffn, 128, 8)
    tensors = [*module.parameters(), *module.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    assert profiles.MIN_BYTES[kind] <= size <= profiles.MAX_BYTES[kind]


def test_mixed_profile_holds_its_documented_shares_in_every_prefix():
    kinds = profiles.kinds_for("mixed", 0, 1000)
    assert Counter(kinds) == {"tiny": 900, "bert-mini": 80, "bert-small": 8, "resnet50": 7, "bert-base": 5}
    for n in (10, 100, 200, 999):
        counts = Counter(kinds[:n])
        for kind, share in profiles.MIXED_SHARES.items():
            assert abs(counts[kind] - share * n) <= 1, (n, kind)
    assert profiles.kinds_for("mixed", 100, 10) == kinds[100:110], "a window must match the full layout"


def test_mixed_generation_names_models_by_kind_and_keeps_tiny_ids(tmp_path):
    manifest = generate_profile(tmp_path, 6, "mixed", seed=1, workers=1)
    assert [m.id for m in manifest.models] == ["mlp-00000", "cnn-00001", "text-00002", "mlp-00003",
                                               "cnn-00004", "bert-mini-00005"]
    assert manifest.models[-1].bytes > 2**25 > max(m.bytes for m in manifest.models[:5])


def test_generation_refuses_before_writing_when_the_disk_lacks_the_space(tmp_path):
    out = tmp_path / "huge"
    with pytest.raises(profiles.NotEnoughDisk, match=r"needs up to .* GiB but .* GiB free"):
        generate_profile(out, 10**6, "bert-base", seed=0)
    assert not out.exists(), "nothing may be written when the space check fails"


def test_cli_prints_the_disk_needed_and_refuses_too_big_a_run(tmp_path):
    result = CliRunner().invoke(fleet, ["generate", "--profile", "bert-base", "--models", "1000000",
                                        "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert "needs up to" in result.output and "free some space" in result.output
    assert not (tmp_path / "x").exists()


def test_unknown_profile_names_the_choices(tmp_path):
    with pytest.raises(profiles.UnknownProfile, match="choose one of: tiny, bert-mini"):
        generate_profile(tmp_path, 1, "gpt-9")
    assert PROFILE_NAMES == profiles.PROFILES, "the CLI's list must follow the profiles module"


def test_tiny_profile_in_torch_export_format(tmp_path):
    manifest = generate_profile(tmp_path, 3, "tiny", seed=2, fmt="torch_export", workers=1)
    for entry in manifest.models:
        assert entry.file.endswith(".pt2") and detect_format(tmp_path / entry.file) == "torch_export"
        module = torch.export.load(str(tmp_path / entry.file)).module()
        (x,) = example_inputs(entry, batch=2)
        y = module(torch.from_numpy(x))
        assert list(y.shape) == [2, *entry.outputs[0].shape[1:]] and np.isfinite(y.detach().numpy()).all()


@pytest.mark.parametrize("dtype", ["FP16", "BF16"])
def test_dtype_variants_declare_and_compute_in_that_type(tmp_path, dtype):
    manifest = generate_profile(tmp_path, 3, "tiny", seed=4, dtype=dtype, workers=1)
    torch_dtype = {"FP16": torch.float16, "BF16": torch.bfloat16}[dtype]
    for entry in manifest.models:
        assert entry.outputs[0].dtype == dtype
        assert entry.inputs[0].dtype == ("INT64" if entry.architecture == "text" else dtype)
        module = torch.jit.load(str(tmp_path / entry.file))
        (x,) = example_inputs(entry, batch=2)
        x = torch.from_numpy(x)
        y = module(x if entry.architecture == "text" else x.to(torch_dtype))
        assert y.dtype == torch_dtype and list(y.shape) == [2, *entry.outputs[0].shape[1:]]
