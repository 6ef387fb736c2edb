"""Architecture families in the real tritonserver: members that are only weights, one program per
architecture, answers bit-identical to the artifacts they were split from, never another member's.

Each member is saved as a whole artifact (TorchScript or torch.export), split in this process by the same
code the validator runs (model_repository/families.py), and laid out in members.json's family form
(model_repository/packing.add_families). References are `torch.jit.load` / `torch.export.load` of the
artifact file itself.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from fleet.triton_server import TritonServer
from fleet.waiting import wait_for
from model_repository.contract import request_parameters
from model_repository.families import split_file
from model_repository.packing import add_families, install_runtime, program_file

pytestmark = pytest.mark.slow
WIDTH, HIDDEN, OUT = 8, 64, 4
MEMBER_BYTES = (WIDTH * HIDDEN + HIDDEN + HIDDEN * OUT + OUT) * 4


def mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(WIDTH, HIDDEN), torch.nn.GELU(), torch.nn.Linear(HIDDEN, OUT)).eval()


def save(module: torch.nn.Module, path: Path, fmt: str) -> None:
    example = torch.randn(2, WIDTH)
    if fmt == "torch_export":
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.export.save(torch.export.export(module, (example,), dynamic_shapes=({0: batch},)), str(path))
    else:
        torch.jit.save(torch.jit.trace(module, example), str(path))


def reference(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    module = torch.export.load(str(path)).module() if fmt == "torch_export" else torch.jit.load(str(path))
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


class FamilyPack:
    """A pack written to the members.json contract, with whole members and family members."""

    def __init__(self, repository: Path, name: str, **parameters: str) -> None:
        self.name, self.version = name, repository / name / "1"
        (self.version / "members").mkdir(parents=True)
        (self.version / "programs").mkdir()
        install_runtime(self.version)
        self.parameters = {"family": "cpu", "torch_threads": "1", "stack_members": "0", **parameters}
        self.members: dict[str, dict] = {}
        self.families: dict[str, dict] = {}
        self.architectures: dict[str, dict] = {}
        self.artifacts: dict[str, tuple[Path, str]] = {}  # member -> (its whole artifact, format)
        self.scratch = repository.parent / f"{name}-artifacts"

    def add(self, ident: str, module: torch.nn.Module, fmt: str = "torchscript", split: bool = True) -> None:
        suffix = ".pt2" if fmt == "torch_export" else ".pt"
        artifact = self.scratch / f"{ident}{suffix}"
        artifact.parent.mkdir(parents=True, exist_ok=True)
        save(module, artifact, fmt)
        self.artifacts[ident] = (artifact, fmt)
        signature = {"inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, WIDTH]}],
                     "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, OUT]}]}
        entry = {"format": fmt, **signature}
        if not split:
            shutil.copyfile(artifact, self.version / "members" / artifact.name)
            data = artifact.read_bytes()
            self.members[ident] = {**entry, "file": f"members/{artifact.name}", "bytes": len(data),
                                   "sha256": hashlib.sha256(data).hexdigest()}
            return
        done = split_file(artifact, fmt, [torch.randn(2, WIDTH)], self.scratch / f"{ident}-split")
        assert done.split.ok, done.split.reason
        shutil.copyfile(done.weights, self.version / "members" / f"{ident}.safetensors")
        relative = program_file(done.architecture, fmt)
        if done.architecture not in self.architectures:
            shutil.copyfile(done.program, self.version / relative)
            self.architectures[done.architecture] = {
                "format": fmt, "tensors": done.split.spec,
                "program": {"path": relative, "sha256": done.program_sha256, "bytes": done.program.stat().st_size}}
        self.members[ident] = {**entry, "file": "", "sha256": "", "bytes": 0}
        self.families[ident] = {"architecture": done.architecture, "sha256": done.weights_sha256,
                                "bytes": done.weights_bytes}

    def write(self, max_queue_delay_us: int | None = 500) -> str:
        document = add_families({"generation": 1, "members": self.members}, self.families, self.architectures)
        (self.version / "members.json").write_text(json.dumps(document))
        lines = [f'name: "{self.name}"', 'backend: "python"', "max_batch_size: 64",
                 *([f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}"]
                   if max_queue_delay_us is not None else []),
                 "instance_group { kind: KIND_CPU count: 1 }",
                 f'input {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [{WIDTH}] }}',
                 'output { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [-1] }']
        for key, value in self.parameters.items():
            lines.append(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')
        (self.version.parent / "config.pbtxt").write_text("\n".join(lines) + "\n")
        return self.name


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`family`: 6 TorchScript members of one architecture, 3 torch.export members of another, one whole
    member, one member whose weights file is truncated on disk. `tight`: 8 members of one architecture in a
    budget for about three (eviction under load). `stacked`: 8 members run over stacked weights."""
    root = tmp_path_factory.mktemp("pack-families")
    repository = root / "repo"
    family = FamilyPack(repository, "family")
    for k in range(6):
        family.add(f"ts{k}", mlp(100 + k))
    for k in range(3):
        family.add(f"ex{k}", mlp(200 + k), fmt="torch_export")
    family.add("whole", mlp(300), split=False)
    family.add("truncated", mlp(400))
    tight = FamilyPack(repository, "tight", max_resident_bytes=str(3 * MEMBER_BYTES + 8 * 2**20))
    for k in range(8):
        tight.add(f"m{k}", mlp(500 + k))
    stacked = FamilyPack(repository, "stacked", stack_members="2")
    for k in range(8):
        stacked.add(f"s{k}", mlp(600 + k))
    names = [family.write(), tight.write(max_queue_delay_us=None), stacked.write(max_queue_delay_us=20000)]
    weights = family.version / "members" / "truncated.safetensors"
    with weights.open("r+b") as handle:  # as a disk that filled up mid-copy would leave it
        handle.truncate(weights.stat().st_size // 2)
    family.members["truncated"]["bytes"] = weights.stat().st_size  # the size check passes: the header must tell
    (family.version / "members.json").write_text(json.dumps(
        add_families({"generation": 1, "members": family.members}, {}, family.architectures)))
    with TritonServer(repository, load_models=tuple(names)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        yield {"server": server, "client": client, "family": family, "tight": tight, "stacked": stacked}
        client.close()


def infer(served, pack: str, member: str, x: np.ndarray, client=None) -> np.ndarray:
    tensor = grpcclient.InferInput("INPUT__0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = (client or served["client"]).infer(pack, [tensor], parameters=request_parameters(member))
    return result.as_numpy("OUTPUT__0")


def metric(served, family: str, **labels: str) -> float | None:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in served["server"].metrics().splitlines():
        if line.startswith(family + "{") and all(w in line for w in wanted):
            return float(line.rsplit(" ", 1)[1])
    return None


X = np.random.default_rng(0).standard_normal((3, WIDTH)).astype(np.float32)


@pytest.mark.parametrize("member", ["ts0", "ts3", "ex0", "ex2", "whole"])
def test_a_member_answers_bit_identically_to_its_own_artifact(served, member):
    artifact, fmt = served["family"].artifacts[member]
    for rows in (1, 3):
        got = infer(served, "family", member, X[:rows])
        assert np.array_equal(got, reference(artifact, fmt, X[:rows])), member


def test_members_of_one_architecture_share_one_program(served):
    for member in ("ts0", "ts1", "ts2", "ex0", "ex1", "whole"):
        infer(served, "family", member, X)
    programs = wait_for(lambda: metric(served, "fleet_pack_programs", pack="family") == 2 or None,
                        what="two programs (one per architecture) in the stub")
    assert programs
    assert len(served["family"].architectures) == 2, "the TorchScript members split into one architecture"
    assert metric(served, "fleet_pack_program_bytes", pack="family") > 0


def test_a_truncated_weights_file_fails_its_member_clearly_and_the_pack_keeps_serving(served):
    with pytest.raises(InferenceServerException) as caught:
        infer(served, "family", "truncated", X)
    message = caught.value.message()
    assert "truncated" in message and "truncated.safetensors" in message, message
    assert str(caught.value.status()).endswith("INTERNAL")
    artifact, fmt = served["family"].artifacts["ts4"]
    assert np.array_equal(infer(served, "family", "ts4", X), reference(artifact, fmt, X))


def own_member(answer: np.ndarray, ident: str, expected: dict[str, np.ndarray]) -> bool:
    """The answer is its own member's (to float rounding) and far from every other member's."""
    return bool(np.allclose(answer, expected[ident], rtol=1e-5, atol=1e-6)) and all(
        np.abs(answer - other).max() > 1e-2 for o, other in expected.items() if o != ident)


def test_no_request_is_ever_answered_with_another_members_weights_under_concurrency_and_eviction(served):
    """16 threads, random members of one architecture in a budget for about three: members are evicted
    and reloaded while others are served by the execute thread and cold ones by the loader thread.

    Bit-for-bit equality is the sequential tests' business: here the loader answers all requests waiting
    for one member with one forward over their rows together, which may round differently from a forward
    over one request's rows, so each answer is checked to be its own member's to float rounding and far
    (> 1e-2) from every other member's."""
    pack = served["tight"]
    inputs = {ident: np.random.default_rng(k).standard_normal((2, WIDTH)).astype(np.float32)
              for k, ident in enumerate(pack.members)}
    expected = {ident: reference(*pack.artifacts[ident], inputs[ident]) for ident in pack.members}
    clients = [grpcclient.InferenceServerClient(served["server"].grpc_url) for _ in range(16)]

    def call(k: int) -> tuple[str, np.ndarray]:
        ident = random.Random(k).choice(sorted(pack.members))
        return ident, infer(served, "tight", ident, inputs[ident], clients[k % 16])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(400)))
    for client in clients:
        client.close()
    wrong = [ident for ident, got in answers if not own_member(got, ident, expected)]
    assert not wrong, f"{len(wrong)} answers were not their own member's: {wrong[:5]}"
    evictions = wait_for(lambda: metric(served, "fleet_pack_evictions_total", pack="tight"), what="evictions")
    assert evictions > 0, "the budget should have forced evictions"
    for ident in sorted(pack.members):  # and alone, each answer is its artifact's, bit for bit
        assert np.array_equal(infer(served, "tight", ident, inputs[ident]), expected[ident]), ident


def test_a_batch_across_members_runs_as_one_forward_and_each_gets_its_own_answer(served):
    pack = served["stacked"]
    members = sorted(pack.members)
    for ident in members:  # resident first: stacking applies to members the execute thread serves
        infer(served, "stacked", ident, X[:1])
    inputs = {ident: np.random.default_rng(k).standard_normal((1, WIDTH)).astype(np.float32)
              for k, ident in enumerate(members)}
    expected = {ident: reference(*pack.artifacts[ident], inputs[ident]) for ident in members}
    clients = [grpcclient.InferenceServerClient(served["server"].grpc_url) for _ in members]
    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(len(members)) as pool:
            calls = [pool.submit(infer, served, "stacked", ident, inputs[ident], client)
                     for ident, client in zip(members, clients, strict=True)]
            answers = {ident: call.result() for ident, call in zip(members, calls, strict=True)}
        for ident in members:
            assert own_member(answers[ident], ident, expected), ident
    for client in clients:
        client.close()
    # Counters reach Triton at the next flush, which a later request triggers (at most once a second).
    stacked = wait_for(lambda: infer(served, "stacked", members[0], X[:1]) is not None and metric(
        served, "fleet_pack_stacked_members_total", pack="stacked"), what="members served over stacked weights")
    assert stacked >= 2
