"""Valid random request tensors for any catalogue model, made once before the load starts.

Like ``model_repository.generator.example_inputs`` but from a signature alone (a control-plane model
has no manifest entry) and with free non-batch dimensions (-1) set to a fixed size, because a
registered model may declare them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model_repository.manifest import NUMPY_DTYPES, TensorSpec

FREE_DIM = 16  # size used for a non-batch dimension declared as -1


def random_inputs(specs: Sequence[TensorSpec], batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One array per input: token ids inside the declared value range, floats from N(0, 1)."""
    arrays = []
    for spec in specs:
        shape = [batch, *(FREE_DIM if d == -1 else d for d in spec.shape[1:])]
        if spec.dtype == "INT64":
            low, high = spec.value_range or (0, 2)
            arrays.append(rng.integers(low, high, size=shape, dtype=np.int64))
        else:
            arrays.append(rng.standard_normal(shape).astype(NUMPY_DTYPES[spec.dtype]))
    return arrays
