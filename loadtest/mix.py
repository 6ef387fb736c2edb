"""Traffic mixes over thousands of models, and a sampler cheap enough for a load generator's hot loop.

Real fleets are skewed: a few models get most requests and a long tail is rarely called, which is what
stresses a pack's resident-set LRU. ``zipf`` models that with weight ``1 / rank**s``; ranks are a seeded
shuffle of the catalogue so the popular models spread over packs instead of filling the first one.
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

Mix = Literal["uniform", "zipf", "file"]
MIXES: tuple[Mix, ...] = ("uniform", "zipf", "file")


class MixError(ValueError):
    """The mix's parameters or weights file are unusable; the message says which and why."""


def read_weights(path: Path) -> dict[str, float]:
    """A CSV with header ``id,weight`` (extra columns are ignored)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise MixError(f"cannot read the weights file {path}: {error}") from None
    weights: dict[str, float] = {}
    for line, row in enumerate(rows, start=2):
        try:
            weight = float(row["weight"])
            ident = row["id"]
        except (KeyError, TypeError, ValueError):
            raise MixError(f"{path}:{line}: expected columns 'id,weight' with a number, got {row}") from None
        if weight < 0 or not np.isfinite(weight):
            raise MixError(f"{path}:{line}: weight of '{ident}' must be a finite number >= 0, got {weight}")
        weights[ident] = weight
    return weights


def probabilities(ids: Sequence[str], mix: Mix, zipf_s: float = 1.1, weights_file: Path | None = None,
                  seed: int = 0) -> np.ndarray:
    """Probability of each model (same order as `ids`) under the chosen mix."""
    if not ids:
        raise MixError("the catalogue is empty")
    if mix == "uniform":
        weights = np.ones(len(ids))
    elif mix == "zipf":
        if zipf_s <= 0:
            raise MixError(f"--zipf-s must be > 0, got {zipf_s}")
        ranks = np.random.default_rng(seed).permutation(len(ids)) + 1
        weights = 1.0 / ranks.astype(np.float64) ** zipf_s
    elif mix == "file":
        if weights_file is None:
            raise MixError("--mix file needs --weights-file")
        table = read_weights(weights_file)
        weights = np.array([table.get(i, 0.0) for i in ids])
        if not weights.any():
            raise MixError(f"no model of the catalogue has a positive weight in {weights_file}")
    else:
        raise MixError(f"unknown mix '{mix}'; choose one of {', '.join(MIXES)}")
    return weights / weights.sum()


class ModelSampler:
    """Draws model indices from a distribution in blocks, so one draw is a list pop, not a numpy call."""

    def __init__(self, probs: np.ndarray, seed: int | Sequence[int], block: int = 4096) -> None:
        self._cdf = np.cumsum(probs)
        self._rng = np.random.default_rng(seed)
        self._block = block
        self._pending: list[int] = []

    def next(self) -> int:
        if not self._pending:
            draws = self._rng.random(self._block) * self._cdf[-1]
            indices = np.minimum(np.searchsorted(self._cdf, draws, side="right"), len(self._cdf) - 1)
            self._pending = indices[::-1].tolist()
        return self._pending.pop()
