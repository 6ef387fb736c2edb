"""Splitting artifacts into an architecture's program and a member's weights (model_repository/families.py),
in this process: what makes two artifacts one architecture, what cannot be split and why, and the weights
file's format (pack_weights.py). The served side is tests/data_plane/test_pack_families.py."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from model_repository.families import architecture_id, runtime_module, split_file
from model_repository.neuron_compile import load_member

WIDTH = 6


class Scaled(torch.nn.Module):
    def __init__(self, seed: int, scale: float, hidden: int = 16) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Sequential(torch.nn.Linear(WIDTH, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 3))
        self.register_buffer("offset", torch.randn(3))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.scale + self.offset


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(WIDTH, WIDTH), torch.nn.Linear(WIDTH, WIDTH)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class Counting(torch.nn.Module):
    """Mutates a buffer on every call: a shared program could not keep members' state apart."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(WIDTH, 2)
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return self.linear(x)


class BigConstant(torch.nn.Module):
    """A 4 MiB tensor that is neither a parameter nor a buffer: baked into the program."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(WIDTH, WIDTH)
        self.table = torch.randn(1024, 1024)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.table[0, :WIDTH]


def save(module: torch.nn.Module, path: Path, fmt: str) -> Path:
    module.eval()
    example = torch.randn(2, WIDTH)
    if fmt == "torch_export":
        batch = torch.export.Dim("batch", min=1, max=64)
        torch.export.save(torch.export.export(module, (example,), dynamic_shapes=({0: batch},)), str(path))
    else:
        torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))
    return path


def split(tmp_path: Path, name: str, module: torch.nn.Module, fmt: str = "torchscript"):
    path = save(module, tmp_path / f"{name}{'.pt2' if fmt == 'torch_export' else '.pt'}", fmt)
    return path, split_file(path, fmt, [torch.randn(2, WIDTH)], tmp_path / f"{name}-split")


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_fine_tunes_share_an_architecture_and_answer_like_their_artifacts(tmp_path, fmt):
    (path_a, a), (path_b, b) = split(tmp_path, "a", Scaled(1, 2.0), fmt), split(tmp_path, "b", Scaled(2, 2.0), fmt)
    assert a.split.ok and b.split.ok, (a.split.reason, b.split.reason)
    assert a.architecture == b.architecture and a.program.read_bytes() == b.program.read_bytes()
    assert a.weights_sha256 != b.weights_sha256
    names = [t["name"] for t in a.split.spec]
    assert "offset" in names and {t["kind"] for t in a.split.spec} == {"parameter", "buffer"}
    programs = runtime_module("pack_programs")
    program = programs.load_program(a.architecture, a.program, fmt, a.split.spec)
    x = torch.randn(5, WIDTH)
    for path, done in ((path_a, a), (path_b, b)):
        reference = torch.export.load(str(path)).module() if fmt == "torch_export" else torch.jit.load(str(path))
        with torch.inference_mode():
            assert torch.equal(program.member(done.weights)(x), reference(x))


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_anything_but_weights_that_differs_makes_another_architecture(tmp_path, fmt):
    base = split(tmp_path, "base", Scaled(1, 2.0), fmt)[1].architecture
    other_constant = split(tmp_path, "constant", Scaled(1, 3.0), fmt)[1].architecture
    other_shape = split(tmp_path, "shape", Scaled(1, 2.0, hidden=12), fmt)[1].architecture
    assert len({base, other_constant, other_shape}) == 3


def test_the_architecture_id_covers_format_program_and_every_column_of_the_table():
    spec = [{"name": "w", "kind": "parameter", "dtype": "float32", "shape": [2, 2], "requires_grad": True}]
    base = architecture_id("torchscript", "a" * 64, spec)
    changed = [dict(spec[0], **{key: value}) for key, value in
               (("name", "v"), ("kind", "buffer"), ("dtype", "float16"), ("shape", [2, 3]), ("requires_grad", False))]
    ids = {architecture_id("torchscript", "a" * 64, [c]) for c in changed}
    ids |= {architecture_id("torch_export", "a" * 64, spec), architecture_id("torchscript", "b" * 64, spec)}
    assert base not in ids and len(ids) == 7


@pytest.mark.parametrize("module, fmt, words", [
    (Tied(), "torchscript", "share memory"),
    (Counting(), "torch_export", "mutates state"),
    (BigConstant(), "torchscript", "neither parameters nor buffers"),
])
def test_what_cannot_be_split_safely_keeps_the_whole_artifact_path_with_the_reason(tmp_path, module, fmt, words):
    _, done = split(tmp_path, type(module).__name__, module, fmt)
    assert not done.split.ok and words in done.split.reason, done.split.reason


def test_weights_files_are_64_byte_aligned_and_a_truncated_one_says_so(tmp_path):
    _, done = split(tmp_path, "aligned", Scaled(4, 1.0))
    weights = runtime_module("pack_weights")
    header = weights.read_header(done.weights)
    (length,) = struct.unpack("<Q", done.weights.read_bytes()[:8])
    starts = [8 + length + entry["data_offsets"][0] for name, entry in header.items()
              if name != "__metadata__" and not name.startswith(weights.PAD_PREFIX)]
    assert all(start % 64 == 0 for start in starts)
    mapped = weights.map_weights(done.weights, done.split.spec)
    assert all(t.data_ptr() % 64 == 0 for t in mapped.values())
    assert isinstance(mapped["body.0.weight"], torch.nn.Parameter) and not isinstance(mapped["offset"],
                                                                                          torch.nn.Parameter)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(done.weights.read_bytes()[:-100])
    with pytest.raises(weights.WeightsError, match="truncated"):
        weights.map_weights(truncated, done.split.spec)
    wrong = [dict(done.split.spec[0], shape=[1, 1])] + done.split.spec[1:]
    with pytest.raises(weights.WeightsError, match="has shape"):
        weights.map_weights(done.weights, wrong)


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_a_family_member_is_rebuilt_whole_for_a_compiler(tmp_path, fmt):
    """Inferentia compiles each member into its own artifact: fleet compile rebuilds split members first."""
    path, done = split(tmp_path, "compile", Scaled(5, 1.5), fmt)
    relative = "programs/p" + (".pt2" if fmt == "torch_export" else ".pt")
    (tmp_path / "programs").mkdir()
    (tmp_path / relative).write_bytes(done.program.read_bytes())
    architecture = {"tensors": done.split.spec, "program": {"path": relative}}
    module = load_member(done.weights, fmt, architecture, tmp_path)
    reference = torch.export.load(str(path)).module() if fmt == "torch_export" else torch.jit.load(str(path))
    x = torch.randn(3, WIDTH)
    with torch.inference_mode():
        assert torch.allclose(module(x), reference(x))
