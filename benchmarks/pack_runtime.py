"""The pack runtime alone: ``model.py``'s ``execute()`` timed in this process, without Triton or the stub.

Why: the peers section gives the server's CPU per answer as a whole, and the floor gives Triton + gRPC +
the stub's IPC. What remains is the pack runtime's Python (reading the ``model_id`` parameter, checks,
grouping by member, building responses) and the members' torch forward passes. Running the real
``triton/backends/pack/model.py`` from a pack's folder against a stand-in for
``triton_python_backend_utils`` (plain Python objects, no IPC) splits those two: the module also times
its forward passes (the ``fleet_member_compute_duration_us_total`` counter), so
``execute`` time minus forward time is the routing.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as pb

from benchmarks.serving import Target
from model_repository.contract import request_parameters


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Request:
    def __init__(self, inputs: dict[str, np.ndarray], parameters: dict[str, str]) -> None:
        self._inputs = {name: _Tensor(name, array) for name, array in inputs.items()}
        self._parameters = json.dumps(parameters)

    def parameters(self) -> str:
        return self._parameters

    def get_response_sender(self) -> _Sender:
        return _Sender()


class _Sender:
    """A cold member's request is answered later, from the runtime's loader thread, through its sender."""

    def send(self, response: object, flags: int = 0) -> None:
        self.response = response


class _TritonError:
    NOT_FOUND, INVALID_ARG, UNAVAILABLE, INTERNAL = "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "INTERNAL"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self.message, self.code = message, code

    def __repr__(self) -> str:
        return f"{self.code}: {self.message}"


class _Response:
    def __init__(self, output_tensors: list, error: object = None) -> None:
        self.output_tensors, self.error = output_tensors, error


class _Metric:
    def __init__(self, labels: dict | None = None) -> None:
        self.value = 0.0

    def increment(self, value: float) -> None:
        self.value += value

    def set(self, value: float) -> None:
        self.value = value


class _MetricFamily:
    COUNTER, GAUGE = "counter", "gauge"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name = name

    def Metric(self, labels: dict | None = None) -> _Metric:  # noqa: N802  Triton's spelling
        return _Metric(labels)


def stand_in_utils() -> types.ModuleType:
    """A ``triton_python_backend_utils`` with what model.py uses, as plain in-process objects."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceResponse = _Response
    module.TritonError = _TritonError
    module.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    module.MetricFamily = _MetricFamily
    module.get_input_tensor_by_name = lambda request, name: request._inputs.get(name)
    return module


def load_pack(model_dir: Path):
    """The pack's own model.py, initialised as Triton would for one CPU instance."""
    sys.modules["triton_python_backend_utils"] = stand_in_utils()
    spec = importlib.util.spec_from_file_location(f"pack_runtime_{model_dir.name}", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    # Keep the per-member counters in the buffer (no periodic flush) so the forward-pass total is readable.
    module.METRICS_FLUSH_SECONDS = float("inf")
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())
    document = json_format.MessageToDict(config, preserving_proto_field_name=True)
    for value in document.get("parameters", {}).values():
        value.setdefault("string_value", "")  # Triton sends empty strings; protobuf's JSON drops them
    args = {"model_config": json.dumps(document),
            "model_name": model_dir.name, "model_repository": str(model_dir), "model_version": "1",
            "model_instance_kind": "CPU", "model_instance_device_id": "0",
            "model_instance_name": f"{model_dir.name}_0_0"}
    pack = module.TritonPythonModel()
    pack.initialize(args)
    return pack


def profile(repository: Path, targets: Sequence[Target], order: Sequence[int], requests: int = 3000,
            batch: int = 1) -> dict:
    """Per-request time of ``execute()`` over the Zipf sequence, `batch` requests per call (as the dynamic
    batcher would hand them over), split into the members' forward passes and the rest."""
    import torch

    torch.set_num_threads(1)
    packs = {name: load_pack(repository / name) for name in sorted({t.model for t in targets})}
    built = [_Request({"INPUT__0": t.array}, request_parameters(t.member) if t.member else {}) for t in targets]
    for index in range(len(targets)):  # load every member, past TorchScript's first (profiling) calls
        pack = packs[targets[index].model]
        ident, deadline = targets[index].member or pack.single_member, time.monotonic() + 60
        pack.execute([built[index]])  # a cold member loads in the runtime's loader thread
        while ident not in pack.resident and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(2):
            pack.execute([built[index]])
    for pack in packs.values():
        pack.buffer.pending.clear()
    sequence = [order[k % len(order)] for k in range(requests)]
    execute_s = 0.0
    started_cpu = time.process_time()
    for start in range(0, len(sequence), batch):
        by_pack: dict[str, list] = {}
        for index in sequence[start:start + batch]:
            by_pack.setdefault(targets[index].model, []).append(built[index])
        for name, group in by_pack.items():
            begun = time.perf_counter()
            responses = packs[name].execute(group)
            execute_s += time.perf_counter() - begun
            if any(r.error for r in responses):
                raise RuntimeError(f"pack {name} answered an error: {[r.error for r in responses if r.error][:1]}")
    cpu_s = time.process_time() - started_cpu
    forward_us = sum(c.compute_us for p in packs.values() for c in p.buffer.pending.values())
    execute_us = execute_s * 1e6
    return {"requests": len(sequence), "batch": batch, "execute_us_per_request": execute_us / len(sequence),
            "forward_us_per_request": forward_us / len(sequence),
            "routing_us_per_request": (execute_us - forward_us) / len(sequence),
            "cpu_us_per_request": cpu_s * 1e6 / len(sequence)}
