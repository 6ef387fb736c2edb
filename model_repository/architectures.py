"""The user-model architectures the generator draws from.

Written with explicit parameters and `torch.nn.functional` rather than `nn.Linear`/`nn.Conv2d`: those carry
`Final` constants whose serialisation order follows Python's randomised string hashing, which would make
the same seed produce different TorchScript bytes from one process to the next.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("relu", "gelu", "tanh")


def _activate(x: torch.Tensor, kind: int) -> torch.Tensor:
    if kind == 0:
        return torch.relu(x)
    if kind == 1:
        return F.gelu(x)
    return torch.tanh(x)


def _param(generator: torch.Generator, *shape: int, fan_in: int) -> nn.Parameter:
    bound = 1.0 / max(fan_in, 1) ** 0.5
    return nn.Parameter((torch.rand(*shape, generator=generator) * 2 - 1) * bound)


class TabularMLP(nn.Module):
    """Tabular features [B, F] -> scores [B, C]: two hidden layers with a per-model activation."""

    def __init__(self, g: torch.Generator, features: int, hidden: int, classes: int, activation: int):
        super().__init__()
        self.activation = activation
        self.w1 = _param(g, hidden, features, fan_in=features)
        self.b1 = _param(g, hidden, fan_in=features)
        self.w2 = _param(g, hidden, hidden, fan_in=hidden)
        self.b2 = _param(g, hidden, fan_in=hidden)
        self.w3 = _param(g, classes, hidden, fan_in=hidden)
        self.b3 = _param(g, classes, fan_in=hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _activate(F.linear(x, self.w1, self.b1), self.activation)
        h = _activate(F.linear(h, self.w2, self.b2), self.activation)
        return F.linear(h, self.w3, self.b3)


class SmallCNN(nn.Module):
    """Images [B, 3, S, S] -> scores [B, C]: two 3x3 convolutions, pooling and a linear head."""

    def __init__(self, g: torch.Generator, channels1: int, channels2: int, classes: int):
        super().__init__()
        self.c1 = _param(g, channels1, 3, 3, 3, fan_in=27)
        self.c1b = _param(g, channels1, fan_in=27)
        self.c2 = _param(g, channels2, channels1, 3, 3, fan_in=channels1 * 9)
        self.c2b = _param(g, channels2, fan_in=channels1 * 9)
        self.head = _param(g, classes, channels2, fan_in=channels2)
        self.head_b = _param(g, classes, fan_in=channels2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(torch.relu(F.conv2d(x, self.c1, self.c1b, padding=1)), 2)
        h = torch.relu(F.conv2d(h, self.c2, self.c2b, padding=1))
        return F.linear(h.mean(dim=(2, 3)), self.head, self.head_b)


class TextBag(nn.Module):
    """Token ids [B, L] -> scores [B, C]: a mean EmbeddingBag, one hidden layer and a linear head."""

    def __init__(self, g: torch.Generator, vocab: int, dim: int, hidden: int, classes: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(vocab, dim, generator=g) * 0.1)
        self.w1 = _param(g, hidden, dim, fan_in=dim)
        self.b1 = _param(g, hidden, fan_in=dim)
        self.w2 = _param(g, classes, hidden, fan_in=hidden)
        self.b2 = _param(g, classes, fan_in=hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        bag = F.embedding_bag(tokens, self.embedding, mode="mean")
        return F.linear(torch.relu(F.linear(bag, self.w1, self.b1)), self.w2, self.b2)
