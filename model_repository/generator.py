"""Writes N unique user models as TorchScript plus a manifest.

Every model draws its architecture's sizes and its weights from (seed, index), so the same arguments give
byte-identical artifacts and manifest, and no two models share weights. Work is spread over processes
started with a fixed PYTHONHASHSEED, because TorchScript's serialised code depends on string hashing.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_repository.architectures import SmallCNN, TabularMLP, TextBag
from model_repository.artifacts import canonical_torchscript, sha256_hex
from model_repository.manifest import Architecture, Manifest, ModelEntry, TensorSpec

ARCHITECTURES: tuple[Architecture, ...] = ("mlp", "cnn", "text")
MODELS_DIR = "models"


@dataclass(frozen=True)
class _Job:
    index: int
    seed: int
    out: str


def model_id(architecture: str, index: int) -> str:
    return f"{architecture}-{index:05d}"


def _build(index: int, seed: int) -> tuple[torch.nn.Module, Architecture, list[TensorSpec], list[TensorSpec]]:
    rng = np.random.default_rng([seed, index])
    g = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    arch = ARCHITECTURES[index % len(ARCHITECTURES)]
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


def _generate_one(job: _Job) -> ModelEntry:
    torch.set_num_threads(1)
    module, arch, inputs, outputs = _build(job.index, job.seed)
    data = canonical_torchscript(torch.jit.script(module))
    ident = model_id(arch, job.index)
    relative = f"{MODELS_DIR}/{ident}.pt"
    path = Path(job.out) / relative
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return ModelEntry(
        id=ident, architecture=arch, file=relative, sha256=sha256_hex(data), bytes=len(data),
        parameters=sum(p.numel() for p in module.parameters()), inputs=inputs, outputs=outputs)


def example_inputs(entry: ModelEntry, batch: int, seed: int = 0) -> list[np.ndarray]:
    """Valid random inputs for a model, for tests, load tests and benchmarks."""
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in entry.inputs:
        shape = [batch, *spec.shape[1:]]
        if spec.dtype == "INT64":
            low, high = spec.value_range or (0, 2)
            arrays.append(rng.integers(low, high, size=shape, dtype=np.int64))
        else:
            arrays.append(rng.standard_normal(shape).astype(np.float32))
    return arrays


def generate(count: int, out: Path, seed: int = 0, workers: int | None = None,
             on_progress: Callable[[int], None] | None = None, start: int = 0) -> Manifest:
    """Generate models [start, start+count) into `out` and write `out/manifest.json`."""
    out = Path(out)
    (out / MODELS_DIR).mkdir(parents=True, exist_ok=True)
    jobs = [_Job(i, seed, str(out)) for i in range(start, start + count)]
    workers = workers or min(os.cpu_count() or 1, 4)
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
                for entry in pool.imap(_generate_one, jobs, chunksize=16):
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
