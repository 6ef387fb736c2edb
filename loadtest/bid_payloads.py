"""Bid requests for the ``adfilter`` Triton model, serialised and wrapped once before the load starts.

The contract (docs/adfilter.md): BYTES input ``BID_REQUEST`` of shape [batch, 1], one OpenRTB JSON
document per row; outputs ``LIKELIHOOD`` (FP32) and ``FILTERED`` (BOOL). The names are restated here
rather than imported from ``adfilter.triton_repo``, which pulls in torch: a load generator should not
pay for that in every process (tests/loadtest checks that both agree).
"""
from __future__ import annotations

import json

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput

from adfilter.synthetic import generate_bid_requests

MODEL_NAME = "adfilter"
INPUT_NAME = "BID_REQUEST"
LIKELIHOOD_NAME = "LIKELIHOOD"
FILTERED_NAME = "FILTERED"


def bid_request_bodies(n: int, seed: int) -> list[bytes]:
    """`n` varied OpenRTB 2.5/2.6 requests as the compact JSON bytes an exchange sends."""
    return [json.dumps(r, separators=(",", ":")).encode() for r in generate_bid_requests(n, seed)]


def bid_input(body: bytes) -> InferInput:
    """One request as a [1, 1] BYTES tensor."""
    tensor = InferInput(INPUT_NAME, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[body]], dtype=np.object_))
    return tensor


def requested_outputs() -> list[InferRequestedOutput]:
    """Only the verdict comes back; the likelihood is not needed to decide."""
    return [InferRequestedOutput(FILTERED_NAME)]
