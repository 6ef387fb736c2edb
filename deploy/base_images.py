"""Documented facts of the base images that cannot be pulled here (NGC), and reading a Dockerfile's pins.

Source: Triton's issue tracker (#5895, #8262) and NGC release notes, as recorded in /work/shared/NOTES.md:
23.05-24.12 are Ubuntu 22.04 with Python 3.10; 25.02 and later Ubuntu 24.04 with Python 3.12; none 3.11.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


def ngc_python(tag: str) -> tuple[int, int]:
    """Python of nvcr.io/nvidia/tritonserver:<tag> (YY.MM-...), from the documented ranges."""
    match = re.match(r"(\d{2})\.(\d{2})", tag)
    if not match:
        raise ValueError(f"not an NGC YY.MM tag: {tag}")
    release = (int(match.group(1)), int(match.group(2)))
    if (23, 5) <= release <= (24, 12):
        return (3, 10)
    if release >= (25, 2):
        return (3, 12)
    raise ValueError(f"no documented Python for NGC {tag}")


def dockerfile_arg(dockerfile: Path, name: str) -> str:
    """The default of `ARG name=...` in a Dockerfile."""
    match = re.search(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.MULTILINE)
    if not match:
        raise KeyError(f"{dockerfile} declares no ARG {name} with a default")
    return match.group(1)


@dataclass(frozen=True)
class NeuronRelease:
    """One AWS Neuron SDK release's PyTorch/XLA pins for Inf2, as its documentation states them."""

    sdk: str
    torch_neuronx: str
    neuronx_cc: str
    runtime_lib: str  # aws-neuronx-runtime-lib (apt), without the build suffix
    torch: str  # the PyTorch version the torch-neuronx line is built for (its first three numbers)
    pythons: tuple[tuple[int, int], ...]
    instances: tuple[str, ...]


# Sources (read 2026-12-07): the Neuron SDK's release manifest (github.com/aws-neuron/aws-neuron-sdk,
# src/helperscripts/n2-manifest.json, entries 2.31.0 and 2.31.1); the "Update to the Neuron 2.31 versions"
# page (awsdocs-neuron.readthedocs-hosted.com/en/latest/archive/frameworks/torch/torch-neuronx/setup/
# pytorch-update-u24.html); AWS's inf2 image pytorch-inference-neuronx:2.9.0-neuronx-py312-sdk2.31.1-ubuntu24.04
# (github.com/aws-neuron/deep-learning-containers, pytorch/inference/2.9.0/Dockerfile.neuronx). Neuron 2.32
# ships no torch-neuronx; Neuron 2.33's torch-neuronx 2.13/2.14 is the native backend for Trn2/Trn3 only.
NEURON_RELEASES = {
    "2.31.1": NeuronRelease(sdk="2.31.1", torch_neuronx="2.9.0.2.15.32035", neuronx_cc="2.26.6360.0",
                            runtime_lib="2.33.10.0", torch="2.9.0", pythons=((3, 11), (3, 12), (3, 13)),
                            instances=("trn1", "inf2", "trn2", "trn3")),
}
