"""Traffic mixes: the shape of each distribution, and a sampler that follows it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadtest.mix import MixError, ModelSampler, probabilities

IDS = [f"m-{i:04d}" for i in range(1000)]


def test_uniform_gives_every_model_the_same_share() -> None:
    np.testing.assert_allclose(probabilities(IDS, "uniform"), np.full(len(IDS), 1 / len(IDS)))


def test_zipf_follows_one_over_rank_to_the_s_with_ranks_spread_over_the_catalogue() -> None:
    probs = probabilities(IDS, "zipf", zipf_s=1.2, seed=3)
    ranked = np.sort(probs)[::-1]
    np.testing.assert_allclose(ranked / ranked[0], 1 / np.arange(1, len(IDS) + 1) ** 1.2, rtol=1e-9)
    top = np.argsort(probs)[::-1][:50]
    assert top.max() > len(IDS) // 2, "popular models should not all sit at the start (first packs)"
    assert np.array_equal(probs, probabilities(IDS, "zipf", zipf_s=1.2, seed=3))


def test_weights_file_sets_shares_and_unlisted_models_get_none(tmp_path: Path) -> None:
    path = tmp_path / "weights.csv"
    path.write_text("id,weight,comment\nm-0001,3,hot\nm-0002,1,\nunknown,5,\n")
    probs = probabilities(IDS, "file", weights_file=path)
    assert probs[1] == pytest.approx(0.75) and probs[2] == pytest.approx(0.25)
    assert probs.sum() == pytest.approx(1.0) and np.count_nonzero(probs) == 2


@pytest.mark.parametrize("text, message", [
    ("id,weight\nm-0001,-1\n", "must be a finite number >= 0"),
    ("id,weight\nm-0001,lots\n", "expected columns 'id,weight'"),
    ("name,share\nm-0001,1\n", "expected columns 'id,weight'"),
    ("id,weight\nnot-in-catalogue,1\n", "no model of the catalogue has a positive weight"),
])
def test_a_bad_weights_file_is_refused_with_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "weights.csv"
    path.write_text(text)
    with pytest.raises(MixError, match=message):
        probabilities(IDS, "file", weights_file=path)


def test_bad_mix_parameters_are_refused() -> None:
    with pytest.raises(MixError, match="zipf-s must be > 0"):
        probabilities(IDS, "zipf", zipf_s=0)
    with pytest.raises(MixError, match="needs --weights-file"):
        probabilities(IDS, "file")
    with pytest.raises(MixError, match="empty"):
        probabilities([], "uniform")


def test_the_sampler_draws_in_proportion_to_the_probabilities() -> None:
    probs = np.array([0.5, 0.3, 0.2, 0.0])
    sampler = ModelSampler(probs, seed=[1, 2, 3], block=1000)
    counts = np.bincount([sampler.next() for _ in range(50_000)], minlength=len(probs))
    np.testing.assert_allclose(counts / counts.sum(), probs, atol=0.01)
    assert counts[3] == 0
