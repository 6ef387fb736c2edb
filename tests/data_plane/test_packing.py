"""`fleet pack`: how user models become Triton models, with a config for every compute family."""
from __future__ import annotations

import json

import pytest
from tritonclient.grpc import model_config_pb2 as pb

from model_repository.manifest import Manifest
from model_repository.packing import build_repository, plan_packs
from model_repository.triton_config import PackSettings, parse_config


def test_packs_hold_one_architecture_and_at_most_pack_size_members(generated_models):
    plans = plan_packs(Manifest.read(generated_models).models, pack_size=8)
    assert sum(len(p.members) for p in plans) == 60
    for plan in plans:
        assert 1 <= len(plan.members) <= 8
        assert {m.architecture for m in plan.members} == {plan.architecture}
    assert len({p.name for p in plans}) == len(plans)


def test_each_pack_has_a_valid_config_per_family(generated_models, tmp_path):
    plans = build_repository(generated_models, tmp_path, pack_size=25)
    pack = tmp_path / plans[0].name
    cpu = parse_config((pack / "config.pbtxt").read_text())
    gpu = parse_config((pack / "configs" / "gpu.pbtxt").read_text())
    inf2 = parse_config((pack / "configs" / "inf2.pbtxt").read_text())
    assert cpu.backend == gpu.backend == inf2.backend == "python"
    assert cpu.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert gpu.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert inf2.instance_group[0].kind == pb.ModelInstanceGroup.KIND_MODEL
    assert inf2.instance_group[0].count <= PackSettings().neuron_cores, "instances must not outnumber cores"
    assert inf2.parameters["family"].string_value == "inf2"
    assert cpu.dynamic_batching.max_queue_delay_microseconds == 500
    members = json.loads((pack / "1" / "members.json").read_text())["members"]
    assert set(members) == {m.id for m in plans[0].members}
    for ident in members:
        assert (pack / "1" / "members" / f"{ident}.pt").exists()
    assert (pack / "1" / "model.py").exists()


def test_dedicated_mode_serves_gpu_models_with_the_libtorch_backend(generated_models, tmp_path):
    plans = build_repository(generated_models, tmp_path, dedicated=True)
    assert len(plans) == 60
    model = tmp_path / plans[0].name
    gpu = parse_config((model / "configs" / "gpu.pbtxt").read_text())
    cpu = parse_config((model / "config.pbtxt").read_text())
    assert gpu.platform == "pytorch_libtorch" and gpu.default_model_filename == "model.pt"
    assert cpu.backend == "python", "the Python-backend path serves the same TorchScript file here"
    assert [d for d in cpu.input[0].dims] == plans[0].members[0].inputs[0].shape[1:]
    assert (model / "1" / "model.pt").exists()


def test_a_malformed_config_is_rejected_with_the_offending_line():
    with pytest.raises(ValueError, match="malformed model config: 2:"):
        parse_config('name: "x"\nmax_batch_size: "many"\n')


def test_pack_size_must_be_positive(generated_models):
    with pytest.raises(ValueError, match="at least 1"):
        plan_packs(Manifest.read(generated_models).models, pack_size=0)
