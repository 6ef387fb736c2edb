"""Held-out metrics for a bid/no-bid likelihood: ranking (ROC AUC) and calibration (ECE, Brier, bins).

Why both: the filter drops requests below a likelihood threshold, so ranking decides how much traffic
can be shed for a given loss of bids, while calibration decides whether a threshold chosen on last
week's data means the same thing today (and whether the likelihood can be read as a probability).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with tied scores sharing their average rank."""
    labels = labels.astype(bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs both positive and negative labels")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average_rank = first + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(average_rank, counts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def reliability_bins(labels: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> list[dict]:
    """Equal-width bins over [0, 1]: count, mean predicted likelihood, observed bid rate."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(scores, edges[1:-1]), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        bins.append({
            "lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
            "mean_predicted": float(scores[mask].mean()) if count else None,
            "observed_rate": float(labels[mask].mean()) if count else None,
        })
    return bins


def expected_calibration_error(bins: list[dict]) -> float:
    """Count-weighted mean |observed - predicted| over the reliability bins."""
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] * abs(b["observed_rate"] - b["mean_predicted"])
                     for b in bins if b["count"]) / total)


def threshold_for_recall(labels: np.ndarray, scores: np.ndarray, bid_recall: float) -> float:
    """The highest threshold that still forwards at least ``bid_recall`` of the requests that got bids."""
    positive_scores = np.sort(scores[labels.astype(bool)])
    drop = int(np.floor((1.0 - bid_recall) * len(positive_scores)))
    return float(positive_scores[drop])


def filter_effect(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """What filtering at ``threshold`` does: share of traffic dropped and share of bids kept."""
    forwarded = scores >= threshold
    bids = labels.astype(bool)
    return {"threshold": threshold, "traffic_filtered": float(1.0 - forwarded.mean()),
            "bid_recall": float(forwarded[bids].mean()),
            "bid_rate_forwarded": float(bids[forwarded].mean()) if forwarded.any() else 0.0}


def evaluate(labels: np.ndarray, scores: np.ndarray, threshold: float, n_bins: int = 10) -> dict:
    labels = labels.astype(np.float64)
    scores = scores.astype(np.float64)
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    bins = reliability_bins(labels, scores, n_bins)
    return {
        "rows": len(labels),
        "base_rate": float(labels.mean()),
        "auc": roc_auc(labels, scores),
        "log_loss": float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))),
        "brier": float(np.mean((scores - labels) ** 2)),
        "ece": expected_calibration_error(bins),
        "reliability": bins,
        "at_threshold": filter_effect(labels, scores, threshold),
    }


def plot_reliability(bins: list[dict], path: Path, title: str) -> None:
    """Reliability diagram plus the histogram of predictions, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = [b for b in bins if b["count"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.plot([b["mean_predicted"] for b in used], [b["observed_rate"] for b in used], marker="o",
             label="model")
    top.set_ylabel("observed bid rate")
    top.set_title(title)
    top.legend(loc="upper left")
    bottom.bar([(b["lower"] + b["upper"]) / 2 for b in bins], [b["count"] for b in bins],
               width=bins[0]["upper"] - bins[0]["lower"], edgecolor="black")
    bottom.set_xlabel("predicted likelihood")
    bottom.set_ylabel("requests")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
