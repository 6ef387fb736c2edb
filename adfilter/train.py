"""Reproducible training on synthetic bid logs: generate -> featurize -> train -> evaluate -> save.

Rows go through exactly the serving path (``json.dumps`` then ``features.featurize`` on bytes), so the
model never sees a feature the server would compute differently. The stream of one seed is split into
train / validation / test by position (samples are i.i.d.): validation picks the best epoch and the
threshold, test is touched once for the reported metrics.

Artifacts written to the output folder:
  ``model.pt``         TorchScript ``LikelihoodModel`` (canonical bytes: same seed, same sha256)
  ``metadata.json``    feature spec, threshold, metrics, training settings
  ``evaluation.json``  held-out AUC, calibration bins, ECE, Brier, effect of the threshold
  ``reliability.png``  reliability diagram
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from adfilter import evaluation
from adfilter.features import CATEGORICAL_FIELDS, FEATURE_SPEC_VERSION, NUMERIC_FIELDS, featurize
from adfilter.model import METADATA_FILE, MODEL_FILE, AdFilterNet, LikelihoodModel, to_tensors
from adfilter.synthetic import WORLD_SEED, iter_labeled_requests
from model_repository.artifacts import canonical_torchscript, sha256_hex

EVALUATION_FILE = "evaluation.json"
PLOT_FILE = "reliability.png"


@dataclass(frozen=True)
class TrainConfig:
    rows: int = 60_000
    seed: int = 0
    epochs: int = 8
    batch_size: int = 512
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    embedding_dim: int = 8
    hidden: tuple[int, ...] = (64, 32)
    validation_share: float = 0.15
    test_share: float = 0.15
    target_bid_recall: float = 0.95  # threshold keeps at least this share of the bids (on validation)
    # One thread: batches of 512 gain nothing from more, results then do not depend on the core count,
    # and on a busy host OpenMP threads spinning for a core made 2-thread runs 7-30x slower.
    torch_threads: int = 1


@dataclass
class Dataset:
    categorical: torch.Tensor
    numeric: torch.Tensor
    labels: torch.Tensor
    generator_probability: np.ndarray  # the generator's own P(bid): an upper bound on achievable AUC

    def slice(self, start: int, stop: int) -> Dataset:
        return Dataset(self.categorical[start:stop], self.numeric[start:stop], self.labels[start:stop],
                       self.generator_probability[start:stop])


def build_dataset(rows: int, seed: int) -> Dataset:
    """Streams the generator so that only feature rows, never the request dicts, are held in memory."""
    features, labels, probabilities = [], [], []
    for sample in iter_labeled_requests(seed, rows):
        raw = json.dumps(sample.request, separators=(",", ":")).encode()
        # Logs record arrival time; it stands in for ext.ts when a request lacks it, as it would live.
        features.append(featurize(raw, sample.timestamp_ms / 1000.0))
        labels.append(sample.bid)
        probabilities.append(sample.probability)
    categorical, numeric = to_tensors(features)
    return Dataset(categorical, numeric, torch.tensor(labels, dtype=torch.float32), np.array(probabilities))


def _scores(net: AdFilterNet, data: Dataset) -> np.ndarray:
    net.eval()
    with torch.inference_mode():
        return torch.sigmoid(net(data.categorical, data.numeric)).numpy().astype(np.float64)


def _log_loss(net: AdFilterNet, data: Dataset) -> float:
    net.eval()
    with torch.inference_mode():
        return nn.functional.binary_cross_entropy_with_logits(
            net(data.categorical, data.numeric), data.labels).item()


def fit(config: TrainConfig, train: Dataset, validation: Dataset,
        progress: Callable[[str], None] = lambda _: None) -> tuple[AdFilterNet, list[dict]]:
    """Adam on BCE; returns the epoch with the best validation log loss and the per-epoch history."""
    torch.manual_seed(config.seed)
    net = AdFilterNet(config.embedding_dim, config.hidden)
    net.fit_standardisation(train.numeric)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    order_rng = torch.Generator().manual_seed(config.seed)
    best_loss, best_state, history = float("inf"), None, []
    n = len(train.labels)
    for epoch in range(config.epochs):
        net.train()
        order = torch.randperm(n, generator=order_rng)
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(net(train.categorical[idx], train.numeric[idx]), train.labels[idx])
            loss.backward()
            optimiser.step()
        val_loss = _log_loss(net, validation)
        history.append({"epoch": epoch + 1, "validation_log_loss": val_loss})
        progress(f"epoch {epoch + 1}/{config.epochs}: validation log loss {val_loss:.5f}")
        if val_loss < best_loss:
            best_loss = val_loss
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    net.eval()
    return net, history


def train(config: TrainConfig, out: Path, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Runs the whole pipeline and writes the artifacts to ``out``; returns the metadata written."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    try:
        return _train(config, out, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _train(config: TrainConfig, out: Path, progress: Callable[[str], None]) -> dict:
    started = time.perf_counter()
    data = build_dataset(config.rows, config.seed)
    n_test = int(config.rows * config.test_share)
    n_val = int(config.rows * config.validation_share)
    n_train = config.rows - n_val - n_test
    train_set, val_set = data.slice(0, n_train), data.slice(n_train, n_train + n_val)
    test_set = data.slice(n_train + n_val, config.rows)
    progress(f"featurised {config.rows} rows in {time.perf_counter() - started:.1f} s")

    net, history = fit(config, train_set, val_set, progress)
    threshold = evaluation.threshold_for_recall(val_set.labels.numpy(), _scores(net, val_set),
                                                config.target_bid_recall)
    test_labels = test_set.labels.numpy()
    report = evaluation.evaluate(test_labels, _scores(net, test_set), threshold)
    report["generator_ceiling_auc"] = evaluation.roc_auc(test_labels, test_set.generator_probability)
    report["history"] = history

    out.mkdir(parents=True, exist_ok=True)
    artifact = canonical_torchscript(torch.jit.script(LikelihoodModel(net)))
    (out / MODEL_FILE).write_bytes(artifact)
    (out / EVALUATION_FILE).write_text(json.dumps(report, indent=2) + "\n")
    evaluation.plot_reliability(report["reliability"], out / PLOT_FILE,
                                f"adfilter: AUC {report['auc']:.3f}, ECE {report['ece']:.4f}")
    metadata = {
        "feature_spec_version": FEATURE_SPEC_VERSION,
        "categorical_fields": [list(f) for f in CATEGORICAL_FIELDS],
        "numeric_fields": list(NUMERIC_FIELDS),
        "threshold": threshold,
        "threshold_rule": f"highest likelihood keeping {config.target_bid_recall:.0%} of validation bids",
        "filtered_means": "likelihood < threshold: the request is dropped, not sent to the partner",
        "metrics": {k: report[k] for k in ("auc", "ece", "brier", "log_loss", "base_rate",
                                           "generator_ceiling_auc", "at_threshold")},
        "model_sha256": sha256_hex(artifact),
        "training": {**asdict(config), "world_seed": WORLD_SEED, "train_rows": n_train,
                     "validation_rows": n_val, "test_rows": n_test, "torch": torch.__version__,
                     "seconds": round(time.perf_counter() - started, 1)},
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata
