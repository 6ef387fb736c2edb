"""Offline scorer: JSON lines of bid requests in, one JSON line of verdict out per input line, in order.

Why batches: a forward pass costs about the same for 1 or 512 rows, so requests are featurised one by
one (each may fail on its own) and scored together. Lines longer than the request size limit are
skipped without ever being held in memory whole, so no input can exhaust the scorer.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from adfilter.features import (
    FEATURE_SPEC_VERSION,
    MAX_REQUEST_BYTES,
    BidRequestError,
    Features,
    try_featurize,
)
from adfilter.model import METADATA_FILE, MODEL_FILE, predict

_CHUNK = 1 << 16


@dataclass(frozen=True)
class LoadedModel:
    module: torch.jit.ScriptModule
    threshold: float
    metadata: dict


def load_model(model_dir: Path) -> LoadedModel:
    """TorchScript module and metadata from a training output folder (or a Triton model version folder)."""
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    if metadata.get("feature_spec_version") != FEATURE_SPEC_VERSION:
        raise ValueError(f"{model_dir} was trained on features {metadata.get('feature_spec_version')!r}, "
                         f"this code computes {FEATURE_SPEC_VERSION!r}: retrain the model")
    module = torch.jit.load(str(model_dir / MODEL_FILE), map_location="cpu")
    module.eval()
    return LoadedModel(module, float(metadata["threshold"]), metadata)


def read_lines(stream: BinaryIO, limit: int = MAX_REQUEST_BYTES) -> Iterator[bytes | BidRequestError]:
    """Lines without their newline; a line over ``limit`` bytes becomes an error and is skipped in chunks."""
    while True:
        line = stream.readline(limit + 2)  # room for the limit plus "\r\n"
        if not line:
            return
        if line.endswith(b"\n") or len(line) <= limit:
            yield line.rstrip(b"\r\n")
            continue
        size = len(line)
        while not line.endswith(b"\n"):
            line = stream.readline(_CHUNK)
            size += len(line)
            if not line:
                break
        size -= len(line) - len(line.rstrip(b"\r\n"))
        yield BidRequestError(f"request is {size} bytes, more than the limit of {limit}")


def verdicts(lines: Iterable[bytes | BidRequestError], model: LoadedModel, threshold: float,
             batch_size: int = 512) -> Iterator[dict]:
    """One result dict per line, in order: {id, likelihood, filtered} or {id, error}."""
    batch: list[bytes | BidRequestError] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= batch_size:
            yield from _score_batch(batch, model, threshold)
            batch = []
    yield from _score_batch(batch, model, threshold)


def _score_batch(batch: list[bytes | BidRequestError], model: LoadedModel, threshold: float) -> list[dict]:
    arrival_s = time.time()
    parsed: list[Features | BidRequestError] = []
    for line in batch:
        if isinstance(line, BidRequestError):
            parsed.append(line)
        elif not line.strip():
            parsed.append(BidRequestError("empty line"))
        else:
            parsed.append(try_featurize(line, arrival_s))
    likelihoods = iter(predict(model.module, [p for p in parsed if isinstance(p, Features)]))
    results = []
    for p in parsed:
        if isinstance(p, BidRequestError):
            results.append({"id": p.request_id, "error": str(p)})
        else:
            likelihood = next(likelihoods)
            results.append({"id": p.request_id, "likelihood": likelihood, "filtered": likelihood < threshold})
    return results
