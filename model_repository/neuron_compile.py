"""Compiles pack members for AWS Inferentia2 with `torch_neuronx.trace`.

Neuron executes static shapes, so each member is traced at one batch size; the pack runtime pads a
smaller batch and splits a larger one. This step needs the Neuron SDK (torch-neuronx), which exists only
for Inf2/Trn1 hosts and their build images; elsewhere it stops with a clear message instead of producing
artifacts that could not run.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from model_repository.generator import example_inputs
from model_repository.manifest import ModelEntry, TensorSpec


class NeuronUnavailable(RuntimeError):
    pass


def require_torch_neuronx():
    try:
        import torch_neuronx
    except ImportError:
        raise NeuronUnavailable(
            "torch-neuronx is not installed here: `fleet compile --family inf2` runs on an Inf2/Trn1 "
            "instance (or the triton-fleet/server-inf2 image) with the AWS Neuron SDK installed "
            "(`pip install torch-neuronx neuronx-cc` from the Neuron pip repository). Nothing was changed."
        ) from None
    return torch_neuronx


def compile_repository(repository: Path, static_batch: int = 8,
                       on_progress: Callable[[int], None] | None = None) -> int:
    """Trace every member of every pack under `repository`; returns how many were compiled."""
    torch_neuronx = require_torch_neuronx()
    compiled = 0
    for members_file in sorted(Path(repository).glob("*/1/members.json")):
        version_dir = members_file.parent
        document = json.loads(members_file.read_text())
        for ident, entry in document["members"].items():
            model = ModelEntry(id=ident, architecture=document["architecture"], file=entry["file"],
                               sha256=entry["sha256"], bytes=entry["bytes"], parameters=0,
                               inputs=[TensorSpec(**i) for i in entry["inputs"]],
                               outputs=[TensorSpec(**o) for o in entry["outputs"]])
            module = torch.jit.load(str(version_dir / entry["file"])).eval()
            example = tuple(torch.from_numpy(a) for a in example_inputs(model, static_batch))
            traced = torch_neuronx.trace(module, example)
            relative = f"members/{ident}.inf2.pt"
            torch.jit.save(traced, str(version_dir / relative))
            data = (version_dir / relative).read_bytes()
            entry.setdefault("artifacts", {})["inf2"] = {
                "path": relative, "sha256": hashlib.sha256(data).hexdigest(), "static_batch": static_batch}
            compiled += 1
            if on_progress:
                on_progress(1)
        tmp = members_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        tmp.replace(members_file)
    return compiled
