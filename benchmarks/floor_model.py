"""The floor: a Triton Python-backend model that accepts a pack's requests and does no work.

Why: it measures what Triton, gRPC and the Python-backend stub cost on their own, with the same request
and response shape as a pack (``model_id`` parameter, ``INPUT__0`` in, ``OUTPUT__0`` of the member's
width out). ``benchmarks.peers`` copies this file over each pack's ``1/model.py`` in a copy of the packs
repository (same configs, same dynamic batching, same instance count), so the difference between the two
is the pack runtime itself: routing, checks, and the member's torch forward pass. It imports neither torch
nor the project; only numpy and Triton's ``triton_python_backend_utils``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        folder = Path(args["model_repository"]) / args["model_version"]
        members = json.loads((folder / "members.json").read_text())["members"]
        # Output width per member: the same response size as the real pack sends back.
        self.width = {ident: int(spec["outputs"][0]["shape"][-1]) for ident, spec in members.items()}
        self.single = next(iter(self.width)) if len(self.width) == 1 else None

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = request.parameters()
            ident = json.loads(raw).get("model_id") if raw else self.single
            width = self.width.get(ident)
            if width is None:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"model '{ident}' is not in this pack")))
                continue
            rows = pb_utils.get_input_tensor_by_name(request, "INPUT__0").as_numpy().shape[0]
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT__0", np.zeros((rows, width), dtype=np.float32))]))
        return responses
