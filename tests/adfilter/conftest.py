"""Shared fixtures: one small trained model per test session (training is the slow part)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from adfilter.synthetic import generate_bid_requests
from adfilter.train import TrainConfig, train

# Small enough to train in a few seconds on 2 cores, large enough for a clear signal.
SESSION_TRAINING = TrainConfig(rows=30_000, seed=11)


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("adfilter-model")
    train(SESSION_TRAINING, out)
    return out


@pytest.fixture(scope="session")
def model_metadata(trained_model: Path) -> dict:
    return json.loads((trained_model / "metadata.json").read_text())


@pytest.fixture(scope="session")
def request_lines() -> list[bytes]:
    """Serialised synthetic requests from a seed the model was not trained on."""
    return [json.dumps(r, separators=(",", ":")).encode() for r in generate_bid_requests(300, seed=99)]
