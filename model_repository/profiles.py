"""Generated-model profiles: what `fleet generate --profile NAME` writes, from 8 KB to 420 MB a model.

Why profiles: the stack exists for thousands of BERT- and ResNet-class models of 40-450 MB each, and
residency, sync, upload and load paths only show their real behaviour at those sizes. Tests and
benchmarks call `model_repository.generator.generate_profile(out_dir, count, profile, seed, fmt)` and get a
manifest as the tiny generator always wrote (this module only describes the kinds; the generator writes them).

Profiles (sizes measured with torch 2.13, FP32, TorchScript; torch.export files are within 2 %):

| profile      | model                                                      | parameters | file      |
|--------------|------------------------------------------------------------|------------|-----------|
| `tiny`       | MLP / small CNN / EmbeddingBag text, by index (the original) | 0.2-70 k | 6-300 KB  |
| `bert-mini`  | BERT encoder: 4 layers, d=256, 4 heads, ffn 1024, vocab 30,522 | 11.1 M | ~42 MiB   |
| `bert-small` | BERT encoder: 4 layers, d=512, 8 heads, ffn 2048, vocab 30,522 | 28.6 M | ~109 MiB  |
| `bert-base`  | BERT encoder: 12 layers, d=768, 12 heads, ffn 3072, vocab 30,522 | 109.2 M | ~417 MiB |
| `resnet50`   | ResNet-50: bottlenecks [3, 4, 6, 3], 1,000 classes          | 25.6 M     | ~98 MiB   |
| `mixed`      | 90 % tiny, 8 % bert-mini, 0.75 % bert-small, 0.75 % resnet50, 0.5 % bert-base | | ~7 MiB avg |

BERT models take INT64 token ids [-1, 128] with value_range [0, 30522) and return FP32 logits [-1, C]
(C in 2, 3, 4, 8 by model); ResNet-50 takes FP32 images [-1, 3, 224, 224] and returns FP32 [-1, 1000].

`mixed` is a fixed interleaving, not a random draw: model i gets the kind whose share is furthest behind
after i models, so every prefix of N models holds the documented shares to within one model (index 0 is
tiny; the first bert-mini is index 5, bert-small 37, resnet50 65, bert-base 104) and `--models 1000` gives
900 tiny / 80 bert-mini / 8 bert-small / 7 resnet50 / 5 bert-base (~6.9 GiB). The seed changes the
weights, never the layout.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Kind = Literal["tiny", "bert-mini", "bert-small", "bert-base", "resnet50"]
KINDS: tuple[Kind, ...] = ("tiny", "bert-mini", "bert-small", "bert-base", "resnet50")
PROFILES: tuple[str, ...] = (*KINDS, "mixed")
MIXED_SHARES: dict[Kind, float] = {"tiny": 0.90, "bert-mini": 0.08, "bert-small": 0.0075, "resnet50": 0.0075,
                                   "bert-base": 0.005}
SEQUENCE_LENGTH = 128
VOCAB = 30522
IMAGE_SIZE = 224


@dataclass(frozen=True)
class BertShape:
    dim: int
    layers: int
    heads: int
    ffn: int


BERT_SHAPES: dict[str, BertShape] = {
    "bert-mini": BertShape(256, 4, 4, 1024),
    "bert-small": BertShape(512, 4, 8, 2048),
    "bert-base": BertShape(768, 12, 12, 3072),
}
# Upper bounds of one artifact's bytes by kind, for the disk check (measured sizes plus a few percent).
MAX_BYTES: dict[Kind, int] = {"tiny": 400 * 2**10, "bert-mini": 45 * 2**20, "bert-small": 115 * 2**20,
                              "bert-base": 430 * 2**20, "resnet50": 105 * 2**20}
# Lower bounds, for tests that check a profile produced what it promises.
MIN_BYTES: dict[Kind, int] = {"tiny": 2 * 2**10, "bert-mini": 38 * 2**20, "bert-small": 100 * 2**20,
                              "bert-base": 400 * 2**20, "resnet50": 90 * 2**20}


class UnknownProfile(ValueError):
    """The profile name is not one of PROFILES."""


class NotEnoughDisk(OSError):
    """The output folder's file system has less free space than the models need."""


def check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise UnknownProfile(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")


@lru_cache(maxsize=8)
def _mixed_layout(length: int) -> tuple[Kind, ...]:
    counts = dict.fromkeys(MIXED_SHARES, 0)
    layout: list[Kind] = []
    for i in range(length):
        kind = max(MIXED_SHARES, key=lambda k: MIXED_SHARES[k] * (i + 1) - counts[k])
        counts[kind] += 1
        layout.append(kind)
    return tuple(layout)


def kinds_for(profile: str, start: int, count: int) -> list[Kind]:
    """The kind of each model index in [start, start + count) under `profile`."""
    check_profile(profile)
    if profile != "mixed":
        return [profile] * count  # type: ignore[list-item]
    length = start + count
    return list(_mixed_layout(1 << max(length - 1, 1).bit_length())[start:length])


def disk_needed(profile: str, count: int, start: int = 0) -> int:
    """An upper bound of the bytes `generate` writes (artifacts, manifest, and one temporary copy)."""
    kinds = kinds_for(profile, start, count)
    return sum(MAX_BYTES[k] for k in kinds) + max(MAX_BYTES[k] for k in kinds) * 2 + 1024 * count


def disk_free(out_dir: Path) -> int:
    path = Path(out_dir).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk(out_dir: Path, needed: int) -> None:
    free = disk_free(out_dir)
    if needed > free:
        raise NotEnoughDisk(f"generating needs up to {needed / 2**30:.2f} GiB but {out_dir} has "
                            f"{free / 2**30:.2f} GiB free; free some space, choose another --out, "
                            "or generate fewer or smaller models (--models, --profile)")


def seed_for(seed: int, index: int) -> np.random.Generator:
    """The one source of randomness for model `index`: its sizes and its weights derive from it."""
    return np.random.default_rng([seed, index])


def build_real(kind: Kind, index: int, seed: int, family_of: int | None = None
               ) -> tuple[torch.nn.Module, str, list, list, torch.Tensor]:
    """Build a real-size model with seeded weights: (module, architecture, inputs, outputs, example).

    Depends only on (kind, index, seed): every random draw comes from generators seeded here, never from
    torch's global generator, and the default dtype is pinned to FP32 while building. With `family_of`, its
    layout (the class count) is model `family_of`'s: fine-tunes of one base, one architecture.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # FP32 whatever the process set; FP16/BF16 come from a cast
    try:
        return _build_real(kind, index, seed, family_of)
    finally:
        torch.set_default_dtype(previous)


def _build_real(kind: Kind, index: int, seed: int, family_of: int | None = None
                ) -> tuple[torch.nn.Module, str, list, list, torch.Tensor]:
    from model_repository.architectures import BertClassifier, ResNet50, fill_parameters
    from model_repository.manifest import TensorSpec

    rng = seed_for(seed, index)
    g = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    if family_of is not None:
        rng = seed_for(seed, family_of)
        rng.integers(0, 2**62)  # model `family_of`'s weight seed: its layout draws come after it
    if kind in BERT_SHAPES:
        shape = BERT_SHAPES[kind]
        classes = int(rng.choice([2, 3, 4, 8]))
        with torch.device("meta"):
            module = BertClassifier(VOCAB, shape.dim, shape.layers, shape.heads, shape.ffn, SEQUENCE_LENGTH,
                                    classes)
        inputs = [TensorSpec(name="INPUT__0", dtype="INT64", shape=[-1, SEQUENCE_LENGTH],
                             value_range=(0, VOCAB))]
        example = torch.randint(0, VOCAB, (2, SEQUENCE_LENGTH), generator=torch.Generator().manual_seed(0))
        architecture = "bert"
    elif kind == "resnet50":
        classes = 1000
        with torch.device("meta"):
            module = ResNet50(classes)
        inputs = [TensorSpec(name="INPUT__0", dtype="FP32", shape=[-1, 3, IMAGE_SIZE, IMAGE_SIZE])]
        # At the declared size: torch.export would otherwise pin the spatial size of a smaller example.
        example = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
        architecture = "resnet"
    else:
        raise ValueError(f"{kind!r} is not a real-size kind")
    fill_parameters(module, g)
    outputs = [TensorSpec(name="OUTPUT__0", dtype="FP32", shape=[-1, classes])]
    return module, architecture, inputs, outputs, example
