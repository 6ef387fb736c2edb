"""`fleet generate`: unique, reproducible TorchScript models with a manifest that describes them."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from model_repository.generator import example_inputs, generate
from model_repository.manifest import Manifest


def test_every_model_is_unique_and_its_manifest_entry_matches_the_artifact(generated_models):
    manifest = Manifest.read(generated_models)
    assert len(manifest.models) == 60
    assert len({m.sha256 for m in manifest.models}) == 60, "two models share identical bytes"
    for entry in manifest.models:
        data = (generated_models / entry.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256
        assert len(data) == entry.bytes


def test_three_architectures_with_different_input_signatures(generated_models):
    manifest = Manifest.read(generated_models)
    signatures = {m.architecture: (m.inputs[0].dtype, len(m.inputs[0].shape)) for m in manifest.models}
    assert signatures == {"mlp": ("FP32", 2), "cnn": ("FP32", 4), "text": ("INT64", 2)}
    text = next(m for m in manifest.models if m.architecture == "text")
    assert text.inputs[0].value_range is not None, "token ids must declare their vocabulary range"


def test_same_arguments_give_a_byte_identical_manifest_in_another_folder(generated_models, tmp_path):
    again = generate(60, tmp_path / "again", seed=7)
    original = (generated_models / "manifest.json").read_bytes()
    assert (tmp_path / "again" / "manifest.json").read_bytes() == original
    assert again.models[5].sha256 == Manifest.read(generated_models).models[5].sha256


def test_another_seed_gives_other_weights(generated_models, tmp_path):
    other = generate(6, tmp_path / "other", seed=8, workers=1)
    assert not {m.sha256 for m in other.models} & {m.sha256 for m in Manifest.read(generated_models).models}


def test_artifacts_load_as_torchscript_and_produce_the_declared_output_shape(generated_models):
    for entry in Manifest.read(generated_models).models[:9]:
        module = torch.jit.load(str(generated_models / entry.file))
        (x,) = example_inputs(entry, batch=3)
        y = module(torch.from_numpy(x))
        assert list(y.shape) == [3, *entry.outputs[0].shape[1:]]
        assert np.isfinite(y.detach().numpy()).all()
