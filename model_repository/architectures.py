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


# ---------------------------------------------------------------------------------------------------------
# Real-size architectures (profiles bert-* and resnet50). Built from torch.nn layers and serialised by
# tracing, not scripting, so the `Final`-constant ordering note above does not apply to them. Their weights
# are filled by `fill_parameters` from one torch.Generator: one call per tensor, no Python loop over
# elements, so a 110 M-parameter model gets unique weights in about a second.
# ---------------------------------------------------------------------------------------------------------


class BertClassifier(nn.Module):
    """Token ids [B, L] (INT64, values in [0, vocab)) -> logits [B, C]: a BERT-shaped encoder.

    Word and position embeddings, LayerNorm, `layers` post-norm TransformerEncoder layers with GELU, a tanh
    pooler over the first token and a linear classifier: the parameter count of BERT for the same
    (vocab, dim, layers, ffn) within a few percent (BERT's token-type embedding and the masked-LM head
    are left out: a sequence classifier serves without them).
    """

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, ffn: int, max_len: int, classes: int):
        super().__init__()
        self.words = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0)
        h = self.norm(self.words(tokens) + self.positions(positions))
        h = self.encoder(h)
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))


class _Bottleneck(nn.Module):
    """ResNet's bottleneck block: 1x1 reduce, 3x3 (carrying the stride), 1x1 expand, plus the shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = (nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
                         if stride != 1 or inplanes != out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return torch.relu(self.bn3(self.conv3(h)) + self.shortcut(x))


class ResNet50(nn.Module):
    """Images [B, 3, S, S] (FP32) -> logits [B, C]: ResNet-50's layout (bottleneck blocks [3, 4, 6, 3],
    widths 64-512, expansion 4): 25.6 M parameters with a 1,000-class head, ~98 MiB as FP32."""

    BLOCKS = (3, 4, 6, 3)

    def __init__(self, classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
        stages, inplanes = [], 64
        for i, blocks in enumerate(self.BLOCKS):
            planes = 64 * 2**i
            for b in range(blocks):
                stages.append(_Bottleneck(inplanes, planes, 2 if b == 0 and i > 0 else 1))
                inplanes = planes * 4
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(inplanes, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


def fill_parameters(module: nn.Module, g: torch.Generator) -> nn.Module:
    """Give every parameter and buffer seeded values, in registration order (deterministic by `g`).

    Weights get N(0, 1/fan_in) (LeCun), so activations stay finite through 16 residual blocks or 12
    encoder layers; norm scales get 1 + N(0, 0.02) (unique, near identity); BatchNorm running statistics
    get mean 0, variance 1. Parameters are created on `meta` by the caller, so nothing is initialised twice.
    """
    module.to_empty(device="cpu")
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_mean" or (leaf == "bias" and tensor.dim() == 1):
                tensor.zero_() if leaf == "running_mean" else tensor.normal_(0.0, 0.02, generator=g)
            elif leaf == "running_var":
                tensor.fill_(1.0)
            elif leaf == "num_batches_tracked":
                tensor.zero_()
            elif tensor.dim() == 1:
                tensor.normal_(1.0, 0.02, generator=g)
            else:
                fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
                tensor.normal_(0.0, fan_in ** -0.5, generator=g)
    return module.eval()
