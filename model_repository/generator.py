"""Writes N unique user models (TorchScript or torch.export) plus a manifest.

Every model draws its architecture's sizes and its weights from (seed, index), so the same arguments give
byte-identical artifacts and manifest, and no two models share weights. Work is spread over processes
started with a fixed PYTHONHASHSEED, because TorchScript's serialised code depends on string hashing.
Which kind of model each index gets (tiny, BERT-, ResNet-shaped) is the profile's business:
see model_repository/profiles.py.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_repository import profiles
from model_repository.architectures import SmallCNN, TabularMLP, TextBag
from model_repository.artifacts import write_canonical_export, write_canonical_torchscript
from model_repository.formats import SUFFIX, TORCH_DTYPES, ArtifactFormat
from model_repository.manifest import NUMPY_DTYPES, Architecture, Manifest, ModelEntry, TensorSpec

ARCHITECTURES: tuple[Architecture, ...] = ("mlp", "cnn", "text")
# Floating-point types a model can be generated in (`--dtype`): weights, float inputs and outputs alike.
FLOAT_DTYPES = ("FP32", "FP16", "BF16")
MODELS_DIR = "models"


# Memory one worker may need per artifact byte while tracing and saving (parameters, traced copy, buffers).
_MEMORY_PER_BYTE = 3
_WORKER_MEMORY_BUDGET = 4 * 2**30


@dataclass(frozen=True)
class _Job:
    index: int
    seed: int
    out: str
    kind: profiles.Kind = "tiny"
    fmt: ArtifactFormat = "torchscript"
    dtype: str = "FP32"
    family_of: int | None = None  # fine-tunes: the layout (sizes) of model `family_of`, weights of its own


def model_id(architecture: str, index: int) -> str:
    """`mlp-00012` for tiny models (named by architecture), `bert-base-00199` for real-size ones (by kind)."""
    return f"{architecture}-{index:05d}"


def _build(index: int, seed: int, family_of: int | None = None
           ) -> tuple[torch.nn.Module, Architecture, list[TensorSpec], list[TensorSpec]]:
    """Model `index`: sizes and weights from (seed, index); with `family_of`, the sizes (and so the
    architecture) of model `family_of` and weights of its own, as fine-tunes of one base would have."""
    rng = np.random.default_rng([seed, index])
    g = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    if family_of is not None:
        rng = np.random.default_rng([seed, family_of])
        rng.integers(0, 2**62)  # the draw that seeds model `family_of`'s weights: its sizes come after it
    arch = ARCHITECTURES[(index if family_of is None else family_of) % len(ARCHITECTURES)]
    classes = int(rng.choice([1, 2, 4, 8, 10]))
    out = [TensorSpec(name="OUTPUT__0", dtype="FP32", shape=[-1, classes])]
    if arch == "mlp":
        features = int(rng.choice([8, 16, 32, 64]))
        module = TabularMLP(g, features, int(rng.choice([16, 32, 64])), classes, int(rng.integers(0, 3)))
        inputs = [TensorSpec(name="INPUT__0", dtype="FP32", shape=[-1, features])]
    elif arch == "cnn":
        size = int(rng.choice([16, 32]))
        module = SmallCNN(g, int(rng.choice([4, 8])), int(rng.choice([8, 16])), classes)
        inputs = [TensorSpec(name="INPUT__0", dtype="FP32", shape=[-1, 3, size, size])]
    else:
        vocab, length = int(rng.choice([500, 1000, 2000])), int(rng.choice([8, 16, 32]))
        module = TextBag(g, vocab, int(rng.choice([16, 32])), int(rng.choice([16, 32])), classes)
        inputs = [TensorSpec(name="INPUT__0", dtype="INT64", shape=[-1, length], value_range=(0, vocab))]
    return module.eval(), arch, inputs, out


def _export(module: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))


def _tiny_example(inputs: list[TensorSpec]) -> torch.Tensor:
    spec = inputs[0]
    shape = [2, *spec.shape[1:]]
    if spec.dtype == "INT64":
        low, high = spec.value_range or (0, 2)
        return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(0))
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _in_dtype(dtype: str, module: torch.nn.Module, example: torch.Tensor, inputs: list[TensorSpec],
              outputs: list[TensorSpec]) -> tuple[torch.nn.Module, torch.Tensor, list[TensorSpec], list[TensorSpec]]:
    """The same model in FP16 or BF16: weights, floating inputs (token ids stay INT64) and outputs."""
    torch_dtype = getattr(torch, TORCH_DTYPES[dtype])
    module = module.to(torch_dtype)
    if example.is_floating_point():
        example = example.to(torch_dtype)
    inputs = [i.model_copy(update={"dtype": dtype}) if i.dtype == "FP32" else i for i in inputs]
    outputs = [o.model_copy(update={"dtype": dtype}) for o in outputs]
    return module, example, inputs, outputs


def _generate_one(job: _Job) -> ModelEntry:
    torch.set_num_threads(1)
    if job.kind == "tiny":
        module, arch, inputs, outputs = _build(job.index, job.seed, job.family_of)
        ident = model_id(arch, job.index)
        example = _tiny_example(inputs)
    else:
        module, arch, inputs, outputs, example = profiles.build_real(job.kind, job.index, job.seed, job.family_of)
        ident = model_id(job.kind, job.index)
    if job.dtype != "FP32":
        module, example, inputs, outputs = _in_dtype(job.dtype, module, example, inputs, outputs)
    relative = f"{MODELS_DIR}/{ident}{SUFFIX[job.fmt]}"
    path = Path(job.out) / relative
    with torch.no_grad():
        if job.fmt == "torch_export":
            sha, size = write_canonical_export(_export(module, example), path)
        elif job.kind == "tiny":
            sha, size = write_canonical_torchscript(torch.jit.script(module), path)
        else:
            # Traced, not scripted: nn.TransformerEncoder's fast path fails the trace check spuriously.
            sha, size = write_canonical_torchscript(torch.jit.trace(module, example, check_trace=False), path)
    entry = dict(id=ident, architecture=arch, file=relative, sha256=sha, bytes=size,
                 parameters=sum(p.numel() for p in module.parameters()), inputs=inputs, outputs=outputs)
    if job.fmt != "torchscript":
        entry["format"] = job.fmt
    return ModelEntry(**entry)


def _workers_for(kinds: list[profiles.Kind], workers: int | None) -> int:
    """Cores, at most 4, and no more than the memory budget allows for the largest model in the run."""
    workers = workers or min(os.cpu_count() or 1, 4)
    largest = max(profiles.MAX_BYTES[k] for k in kinds)
    return max(1, min(workers, _WORKER_MEMORY_BUDGET // (largest * _MEMORY_PER_BYTE)))


def example_inputs(entry: ModelEntry, batch: int, seed: int = 0) -> list[np.ndarray]:
    """Valid random inputs for a model, for tests, load tests and benchmarks."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in entry.inputs:
        shape = [batch, *spec.shape[1:]]
        if spec.dtype == "INT64":
            low, high = spec.value_range or (0, 2)
            arrays.append(rng.integers(low, high, size=shape, dtype=np.int64))
        else:  # BF16 has no numpy type: float32 arrays (clients send them as BF16; torch converts)
            arrays.append(rng.standard_normal(shape).astype(NUMPY_DTYPES[spec.dtype]))
    return arrays


def generate(count: int, out: Path, seed: int = 0, workers: int | None = None,
             on_progress: Callable[[int], None] | None = None, start: int = 0, profile: str = "tiny",
             fmt: ArtifactFormat = "torchscript", check_disk_space: bool = True, dtype: str = "FP32",
             family: bool = False) -> Manifest:
    """Generate models [start, start+count) of `profile` into `out` and write `out/manifest.json`.

    With `family`, all of them are fine-tunes of one base: the layout of model `start` (one architecture
    for a single-kind profile), each with weights of its own (architecture families, docs/data-plane.md).

    Refuses (profiles.NotEnoughDisk) before writing anything when the disk lacks the space.
    """
    out = Path(out)
    kinds = profiles.kinds_for(profile, start, count)
    if fmt not in SUFFIX:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(SUFFIX)}")
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(FLOAT_DTYPES)}")
    if check_disk_space:
        profiles.check_disk(out, profiles.disk_needed(profile, count, start))
    (out / MODELS_DIR).mkdir(parents=True, exist_ok=True)
    jobs = [_Job(i, seed, str(out), kind, fmt, dtype, start if family else None)
            for i, kind in zip(range(start, start + count), kinds, strict=True)]
    workers = _workers_for(kinds, workers)
    entries: list[ModelEntry] = []
    if workers <= 1 or count < 8:
        for job in jobs:
            entries.append(_generate_one(job))
            if on_progress:
                on_progress(1)
    else:
        previous = os.environ.get("PYTHONHASHSEED")
        os.environ["PYTHONHASHSEED"] = "0"
        try:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                chunk = 16 if profile == "tiny" else 1
                for entry in pool.imap(_generate_one, jobs, chunksize=chunk):
                    entries.append(entry)
                    if on_progress:
                        on_progress(1)
        finally:
            if previous is None:
                os.environ.pop("PYTHONHASHSEED", None)
            else:
                os.environ["PYTHONHASHSEED"] = previous
    manifest = Manifest(seed=seed, models=entries)
    manifest.write(out)
    return manifest


def generate_profile(out_dir: Path, count: int, profile: str = "tiny", seed: int = 0,
                     fmt: ArtifactFormat = "torchscript", **options) -> Manifest:
    """Write `count` unique models of `profile` (model_repository/profiles.py) as `fmt` into `out_dir`, with
    `out_dir/manifest.json`. Options as `generate`: workers, on_progress, start, check_disk_space, dtype."""
    return generate(count, out_dir, seed=seed, profile=profile, fmt=fmt, **options)
