"""Everything a load generator needs before the first request: targets with ready-made request tensors
and a traffic mix. Built once per process so the hot loop only picks a target and sends it.

Shared by the locust user (gevent tritonclient) and the asyncio driver: ``tritonclient.grpc.aio``
re-exports the same ``InferInput`` class, and an ``InferInput`` is only read when a request is built,
so one instance serves every concurrent request to its model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from tritonclient.grpc import InferInput

from loadtest.catalogue import CatalogueModel
from loadtest.mix import Mix, ModelSampler, probabilities
from loadtest.payloads import random_inputs
from model_repository.contract import MODEL_ID_PARAMETER

NameBy = Literal["member", "pack/member", "pack"]
NAME_BY: tuple[NameBy, ...] = ("member", "pack/member", "pack")


@dataclass(frozen=True)
class Target:
    """One user model, ready to send: pack, request parameters and pre-built input tensors."""

    model: CatalogueModel
    name: str  # the request name in statistics
    inputs: tuple[InferInput, ...]
    parameters: dict[str, str]


@dataclass(frozen=True)
class Workload:
    targets: tuple[Target, ...]
    probs: np.ndarray

    def sampler(self, seed: int | Sequence[int]) -> ModelSampler:
        return ModelSampler(self.probs, seed)


def request_name(model: CatalogueModel, name_by: NameBy) -> str:
    if name_by == "member":
        return model.id
    if name_by == "pack":
        return model.pack
    return f"{model.pack}/{model.id}"


def make_target(model: CatalogueModel, name_by: NameBy, batch: int, rng: np.random.Generator) -> Target:
    inputs = []
    for spec, array in zip(model.inputs, random_inputs(model.inputs, batch, rng), strict=True):
        tensor = InferInput(spec.name, list(array.shape), spec.dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return Target(model, request_name(model, name_by), tuple(inputs), {MODEL_ID_PARAMETER: model.id})


def build_workload(models: Sequence[CatalogueModel], mix: Mix, zipf_s: float = 1.1,
                   weights_file: Path | None = None, seed: int = 0, batch: int = 1,
                   name_by: NameBy = "member") -> Workload:
    """Targets for every model (inputs drawn from `seed`) and the mix's probabilities over them."""
    if batch < 1:
        raise ValueError(f"batch size must be at least 1, got {batch}")
    rng = np.random.default_rng(seed)
    targets = tuple(make_target(m, name_by, batch, rng) for m in models)
    return Workload(targets, probabilities([m.id for m in models], mix, zipf_s, weights_file, seed))
