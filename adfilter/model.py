"""The bid/no-bid model: one embedding table for every hashed categorical, an MLP, a logit.

Why one table with per-field offsets instead of one ``nn.Embedding`` per field: a single gather per
batch is what keeps a forward pass for a few hundred requests in the tens of microseconds on CPU.
Numeric features are standardised inside the module (mean/std fitted on the training set and saved as
buffers), so the TorchScript artifact is self-contained: raw feature vectors in, likelihood out.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from adfilter.features import CATEGORICAL_FIELDS, NUMERIC_FIELDS, Features

MODEL_FILE = "model.pt"  # TorchScript LikelihoodModel
METADATA_FILE = "metadata.json"  # feature spec version, threshold, metrics


class AdFilterNet(nn.Module):
    """Returns logits; training uses them directly (BCE with logits is numerically safer)."""

    def __init__(self, embedding_dim: int = 8, hidden: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        cardinalities = [c for _, c in CATEGORICAL_FIELDS]
        offsets = [0]
        for c in cardinalities[:-1]:
            offsets.append(offsets[-1] + c)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long))
        self.register_buffer("numeric_mean", torch.zeros(len(NUMERIC_FIELDS)))
        self.register_buffer("numeric_std", torch.ones(len(NUMERIC_FIELDS)))
        self.embedding = nn.Embedding(sum(cardinalities), embedding_dim)
        layers: list[nn.Module] = []
        width = len(cardinalities) * embedding_dim + len(NUMERIC_FIELDS)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        nn.init.normal_(self.embedding.weight, std=0.05)

    def fit_standardisation(self, numeric: torch.Tensor) -> None:
        """Store the training set's numeric mean/std (constant columns keep std 1)."""
        std = numeric.std(dim=0)
        self.numeric_mean.copy_(numeric.mean(dim=0))
        self.numeric_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(categorical + self.offsets).flatten(1)
        scaled = (numeric - self.numeric_mean) / self.numeric_std
        return self.mlp(torch.cat([embedded, scaled], dim=1)).squeeze(1)


class LikelihoodModel(nn.Module):
    """What is exported: ``(categorical int64 [B, C], numeric float32 [B, N]) -> P(bid) float32 [B]``."""

    def __init__(self, net: AdFilterNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(categorical, numeric))


def to_tensors(rows: Sequence[Features]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack featurised requests into the model's two input tensors."""
    categorical = torch.tensor([r.categorical for r in rows], dtype=torch.long)
    numeric = torch.tensor([r.numeric for r in rows], dtype=torch.float32)
    return categorical, numeric


def predict(module: torch.nn.Module, rows: Sequence[Features]) -> list[float]:
    """Likelihoods for featurised requests in one forward pass; shared by the CLI scorer and Triton."""
    if not rows:
        return []
    with torch.inference_mode():
        return module(*to_tensors(rows)).tolist()
