"""Triton Python-backend model ``adfilter``: raw OpenRTB JSON in, bid likelihood and filter verdict out.

Copied verbatim as ``REPO/adfilter/1/model.py`` by ``fleet adfilter build-triton``. It imports the
installed ``adfilter`` package (the stub runs in the project's virtualenv), so the server featurises
with exactly the code the model was trained and scored offline with.

Contract (docs/adfilter.md):
  * input ``BID_REQUEST`` BYTES ``[batch, 1]``: one bid request's JSON per row;
  * outputs ``LIKELIHOOD`` FP32 ``[batch, 1]`` and ``FILTERED`` BOOL ``[batch, 1]``
    (``likelihood < threshold``: drop the request, do not send it to the partner);
  * a malformed bid request fails only its own inference request, with a message naming the problem;
    an inference request carrying several rows fails as a whole if any row is malformed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from adfilter.features import BidRequestError, Features, try_featurize
from adfilter.model import predict
from adfilter.scoring import load_model


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        parameters = json.loads(args["model_config"]).get("parameters", {})
        torch.set_num_threads(int(parameters["torch_threads"]["string_value"]))
        self.threshold = float(parameters["threshold"]["string_value"])
        self.model = load_model(Path(args["model_repository"]) / args["model_version"])

    def execute(self, requests: list) -> list:
        """Featurise each request on its own, score every valid row in one forward pass."""
        arrival_s = time.time()
        responses: list = [None] * len(requests)
        rows: list[Features] = []
        spans: list[tuple[int, int, int]] = []  # (request index, first row, end row)
        for i, request in enumerate(requests):
            raws = pb_utils.get_input_tensor_by_name(request, "BID_REQUEST").as_numpy().reshape(-1)
            parsed = [try_featurize(raw, arrival_s) for raw in raws]
            errors = [(j, p) for j, p in enumerate(parsed) if isinstance(p, BidRequestError)]
            if errors:
                j, error = errors[0]
                message = str(error) if len(parsed) == 1 else f"BID_REQUEST[{j}]: {error}"
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))
                continue
            spans.append((i, len(rows), len(rows) + len(parsed)))
            rows.extend(parsed)
        likelihoods = np.asarray(predict(self.model.module, rows), dtype=np.float32).reshape(-1, 1)
        for i, start, end in spans:
            likelihood = likelihoods[start:end]
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("LIKELIHOOD", likelihood),
                pb_utils.Tensor("FILTERED", likelihood < self.threshold),
            ])
        return responses
