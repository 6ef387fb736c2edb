"""Builds the Triton model ``adfilter``: a Python-backend model that takes raw OpenRTB JSON.

Why the Python backend (also on GPU hosts): the work per request is parsing and featurising JSON, which
the libtorch backend cannot do; the MLP itself costs microseconds on CPU, so the model stays on CPU
(``KIND_CPU``) and dynamic batching gathers concurrent requests into one forward pass.

Layout written::

    REPO/adfilter/config.pbtxt
    REPO/adfilter/1/model.py        (adfilter/triton_model.py, verbatim)
    REPO/adfilter/1/model.pt        (TorchScript from training)
    REPO/adfilter/1/metadata.json
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from adfilter.model import METADATA_FILE, MODEL_FILE
from adfilter.scoring import load_model

MODEL_NAME = "adfilter"
INPUT_NAME = "BID_REQUEST"
LIKELIHOOD_NAME = "LIKELIHOOD"
FILTERED_NAME = "FILTERED"


@dataclass(frozen=True)
class TritonSettings:
    max_batch_size: int = 256
    max_queue_delay_us: int = 300  # within the ~10 ms budget; enough for batches to form under load
    instances: int = 1
    torch_threads: int = 1  # one forward pass per batch is tiny; instances, not threads, add throughput
    threshold: float | None = None  # None: the threshold chosen at training time


def _tensor(tensors, name: str, data_type: int) -> None:
    tensor = tensors.add()
    tensor.name = name
    tensor.data_type = data_type
    tensor.dims.append(1)


def model_config(threshold: float, settings: TritonSettings) -> str:
    """config.pbtxt text, built on Triton's protobuf schema so a misspelt field fails here."""
    config = pb.ModelConfig(name=MODEL_NAME, backend="python", max_batch_size=settings.max_batch_size)
    _tensor(config.input, INPUT_NAME, pb.TYPE_STRING)
    _tensor(config.output, LIKELIHOOD_NAME, pb.TYPE_FP32)
    _tensor(config.output, FILTERED_NAME, pb.TYPE_BOOL)
    config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
    group = config.instance_group.add()
    group.kind = pb.ModelInstanceGroup.KIND_CPU
    group.count = settings.instances
    config.parameters["threshold"].string_value = repr(threshold)
    config.parameters["torch_threads"].string_value = str(settings.torch_threads)
    return text_format.MessageToString(config)


def build_triton_model(model_dir: Path, repository: Path, settings: TritonSettings) -> Path:
    """Writes REPO/adfilter from a training output folder; returns the model's folder."""
    loaded = load_model(model_dir)  # refuses artifacts built for another feature spec
    threshold = loaded.threshold if settings.threshold is None else settings.threshold
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    target = repository / MODEL_NAME
    version = target / "1"
    version.mkdir(parents=True, exist_ok=True)
    (target / "config.pbtxt").write_text(model_config(threshold, settings))
    shutil.copy2(Path(__file__).with_name("triton_model.py"), version / "model.py")
    for name in (MODEL_FILE, METADATA_FILE):
        shutil.copy2(model_dir / name, version / name)
    return target
