"""Pack runtime: one Triton Python-backend model that serves many unique TorchScript user models.

Why: every Python-backend model is its own stub process (~150-220 MB with torch). A pack hosts hundreds
of members in one process, loads each lazily on first request, keeps the hot ones in an LRU bounded by
bytes, and groups requests by member so each member runs one forward pass per batch.

Client contract (see docs/data-plane.md):
  * the member is named by the request parameter ``model_id`` (KServe v2 ``parameters``); a pack with a
    single member (dedicated mode) needs no parameter;
  * inputs ``INPUT__0`` ... and outputs ``OUTPUT__0`` ... follow the member's signature in members.json;
  * a request for an unknown member, or with a wrong shape, dtype or value range, gets its own error
    response; the other requests of the batch are not disturbed.

This file is copied verbatim into every pack; it depends only on torch, numpy and Triton's
``triton_python_backend_utils``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

MEMBERS_FILE = "members.json"
NUMPY_DTYPES = {"FP32": np.float32, "INT64": np.int64}
METRICS_FLUSH_SECONDS = 1.0


class RequestError(Exception):
    """A problem with one request that the client can fix; becomes that request's error response."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # without the batch dimension
    value_range: tuple[int, int] | None


@dataclass
class Member:
    """One user model in the pack, as declared in members.json."""

    id: str
    path: Path | None  # None: no artifact for this compute family (e.g. not compiled for inf2)
    sha256: str
    inputs: list[InputSpec]
    output_names: list[str]
    static_batch: int | None = None  # Neuron artifacts run one compiled batch size


@dataclass
class Resident:
    module: object
    nbytes: int


@dataclass
class MemberCounters:
    requests: int = 0
    failures: int = 0
    compute_us: float = 0.0
    loads: int = 0
    evictions: int = 0


@dataclass
class MetricsBuffer:
    """Per-member counters buffered in the stub and flushed about once a second.

    Each metric update is an IPC round trip to the server, so updating per request would cost more than
    the inference itself for small models.
    """

    pending: dict[str, MemberCounters] = field(default_factory=lambda: defaultdict(MemberCounters))
    last_flush: float = field(default_factory=time.monotonic)


def _parse_members(version_dir: Path, family: str) -> dict[str, Member]:
    document = json.loads((version_dir / MEMBERS_FILE).read_text())
    members = {}
    for ident, entry in document["members"].items():
        # Inferentia needs members compiled by `fleet compile --family inf2`; other families run the
        # portable TorchScript artifact.
        artifact = entry.get("artifacts", {}).get(family)
        if artifact is None and family != "inf2":
            artifact = {"path": entry["file"], "sha256": entry["sha256"]}
        members[ident] = Member(
            id=ident,
            path=version_dir / artifact["path"] if artifact else None,
            sha256=artifact["sha256"] if artifact else "",
            inputs=[InputSpec(name=i["name"], dtype=np.dtype(NUMPY_DTYPES[i["dtype"]]),
                              shape=tuple(i["shape"][1:]),
                              value_range=tuple(i["value_range"]) if i.get("value_range") else None)
                    for i in entry["inputs"]],
            output_names=[o["name"] for o in entry["outputs"]],
            static_batch=artifact.get("static_batch") if artifact else None,
        )
    return members


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.pack = args["model_name"]
        self.family = params.get("family", "cpu")
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.max_resident_bytes = int(params.get("max_resident_bytes", str(512 * 2**20)))
        self.device = self._select_device(args, params)

        import torch  # after NEURON_RT_VISIBLE_CORES is set, so the Neuron runtime sees only our cores

        self.torch = torch
        torch.set_num_threads(int(params.get("torch_threads", "1")))
        if self.family == "inf2":
            import torch_neuronx  # noqa: F401  registers the Neuron ops TorchScript artifacts need

        self.members = _parse_members(version_dir, self.family)
        self.single_member = next(iter(self.members)) if len(self.members) == 1 else None
        self.resident: OrderedDict[str, Resident] = OrderedDict()
        self.resident_bytes = 0
        self._init_metrics()
        for ident in filter(None, params.get("preload", "").split(",")):
            if ident in self.members:
                self._resident(ident)
        self._flush_metrics(force=True)

    def _select_device(self, args: dict, params: dict) -> str:
        if self.family == "inf2":
            # One NeuronCore per instance: instance N of this pack owns core offset+N.
            instance = int(args["model_instance_name"].rsplit("_", 1)[-1] or 0)
            offset = int(params.get("neuron_core_offset", "0"))
            os.environ["NEURON_RT_VISIBLE_CORES"] = str(offset + instance)
            return "cpu"  # Neuron artifacts take CPU tensors and run on the visible core
        if args.get("model_instance_kind") == "GPU":
            return f"cuda:{args['model_instance_device_id']}"
        return "cpu"

    # ---- metrics -------------------------------------------------------------------------------
    def _init_metrics(self) -> None:
        family = pb_utils.MetricFamily
        self.metric_families = {
            "requests": family("fleet_member_requests_total", "Inference requests per pack member",
                               family.COUNTER),
            "failures": family("fleet_member_failures_total", "Failed inference requests per pack member",
                               family.COUNTER),
            "compute_us": family("fleet_member_compute_duration_us_total",
                                 "Microseconds spent in the member's forward pass, summed over requests",
                                 family.COUNTER),
            "loads": family("fleet_member_loads_total", "Times a member was loaded into memory",
                            family.COUNTER),
            "evictions": family("fleet_member_evictions_total", "Times a member was evicted from the LRU",
                                family.COUNTER),
            "resident_bytes": family("fleet_member_resident_bytes", "Bytes of a resident member's tensors",
                                     family.GAUGE),
        }
        # Families must outlive their metrics, so they are kept on self.
        self.pack_families = {
            "bytes": family("fleet_pack_resident_bytes", "Bytes of all resident members of a pack",
                            family.GAUGE),
            "members": family("fleet_pack_resident_members", "Resident members of a pack", family.GAUGE),
        }
        self.pack_resident_bytes = self.pack_families["bytes"].Metric(labels={"pack": self.pack})
        self.pack_resident_members = self.pack_families["members"].Metric(labels={"pack": self.pack})
        self.metrics: dict[tuple[str, str], object] = {}
        self.buffer = MetricsBuffer()

    def _metric(self, kind: str, member: str):
        key = (kind, member)
        metric = self.metrics.get(key)
        if metric is None:
            metric = self.metric_families[kind].Metric(labels={"pack": self.pack, "member": member})
            self.metrics[key] = metric
        return metric

    def _flush_metrics(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.buffer.last_flush < METRICS_FLUSH_SECONDS:
            return
        for member, counters in self.buffer.pending.items():
            for kind in ("requests", "failures", "compute_us", "loads", "evictions"):
                value = getattr(counters, kind)
                if value:
                    self._metric(kind, member).increment(value)
        self.buffer.pending.clear()
        self.buffer.last_flush = now
        self.pack_resident_bytes.set(self.resident_bytes)
        self.pack_resident_members.set(len(self.resident))

    # ---- residency -----------------------------------------------------------------------------
    def _load(self, member: Member) -> Resident:
        if member.path is None:
            raise RequestError(f"model '{member.id}' has no {self.family} artifact: run "
                               f"`fleet compile --family {self.family}` and re-sync the repository")
        try:
            data = member.path.read_bytes()
        except OSError as error:
            raise RequestError(f"model '{member.id}': artifact {member.path.name} cannot be read "
                               f"({error.strerror}); re-sync the repository") from None
        if hashlib.sha256(data).hexdigest() != member.sha256:
            raise RequestError(f"model '{member.id}': artifact {member.path.name} does not match its "
                               f"sha256 in {MEMBERS_FILE}; it changed on disk since the pack was loaded "
                               "or is corrupt: re-sync and reload the pack")
        import io

        try:
            module = self.torch.jit.load(io.BytesIO(data), map_location=self.device)
        except Exception as error:  # noqa: BLE001  any loader failure is this member's problem only
            raise RequestError(f"model '{member.id}': artifact is not a loadable TorchScript module "
                               f"({str(error).splitlines()[0][:200]})") from None
        module.eval()
        nbytes = sum(t.numel() * t.element_size()
                     for t in list(module.parameters()) + list(module.buffers()))
        return Resident(module=module, nbytes=nbytes)

    def _resident(self, ident: str) -> Resident:
        entry = self.resident.get(ident)
        if entry is not None:
            self.resident.move_to_end(ident)
            return entry
        entry = self._load(self.members[ident])
        self.buffer.pending[ident].loads += 1
        while self.resident and self.resident_bytes + entry.nbytes > self.max_resident_bytes:
            evicted, old = self.resident.popitem(last=False)
            self.resident_bytes -= old.nbytes
            self.buffer.pending[evicted].evictions += 1
            self._metric("resident_bytes", evicted).set(0)
        self.resident[ident] = entry
        self.resident_bytes += entry.nbytes
        self._metric("resident_bytes", ident).set(entry.nbytes)
        return entry

    # ---- requests ------------------------------------------------------------------------------
    def _member_id(self, request) -> str:
        raw = request.parameters()
        ident = json.loads(raw).get("model_id") if raw else None
        if ident is None:
            if self.single_member is not None:
                return self.single_member
            raise RequestError(f"pack '{self.pack}' hosts {len(self.members)} models: name one with the "
                               "request parameter 'model_id'")
        if not isinstance(ident, str) or ident not in self.members:
            raise RequestError(f"model '{ident}' is not in pack '{self.pack}'; ask the control plane "
                               "where it is served (GET /api/v1/models/{id})")
        return ident

    def _inputs(self, request, member: Member) -> list[np.ndarray]:
        arrays = []
        for spec in member.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is None:
                raise RequestError(f"model '{member.id}' needs input '{spec.name}'")
            array = tensor.as_numpy()
            if array.dtype != spec.dtype:
                raise RequestError(f"model '{member.id}' input '{spec.name}' must be "
                                   f"{spec.dtype.name}, got {array.dtype.name}")
            if array.ndim != len(spec.shape) + 1 or tuple(array.shape[1:]) != spec.shape:
                expected = "[batch, " + ", ".join(map(str, spec.shape)) + "]"
                raise RequestError(f"model '{member.id}' input '{spec.name}' must have shape {expected}, "
                                   f"got {list(array.shape)}")
            if spec.value_range is not None and array.size:
                low, high = spec.value_range
                if int(array.min()) < low or int(array.max()) >= high:
                    raise RequestError(f"model '{member.id}' input '{spec.name}' values must lie in "
                                       f"[{low}, {high}), got [{int(array.min())}, {int(array.max())}]")
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise RequestError(f"model '{member.id}' input '{spec.name}' contains NaN or infinity")
            arrays.append(array)
        return arrays

    @staticmethod
    def _error(message: str):
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

    def execute(self, requests):
        responses: list = [None] * len(requests)
        groups: dict[str, list[tuple[int, list[np.ndarray]]]] = defaultdict(list)
        for index, request in enumerate(requests):
            ident = None
            try:
                ident = self._member_id(request)
                self.buffer.pending[ident].requests += 1
                groups[ident].append((index, self._inputs(request, self.members[ident])))
            except RequestError as error:
                if ident is not None:
                    self.buffer.pending[ident].failures += 1
                responses[index] = self._error(str(error))
        for ident, items in groups.items():
            self._run_member(ident, items, responses)
        self._flush_metrics()
        return responses

    def _run_member(self, ident: str, items: list[tuple[int, list[np.ndarray]]], responses: list) -> None:
        """One forward pass for every request to this member in the batch."""
        member = self.members[ident]
        counters = self.buffer.pending[ident]
        try:
            module = self._resident(ident).module
            started = time.perf_counter()
            batch = [np.concatenate([arrays[i] for _, arrays in items]) if len(items) > 1 else items[0][1][i]
                     for i in range(len(member.inputs))]
            outputs = self._forward(module, batch, member.static_batch)
            counters.compute_us += (time.perf_counter() - started) * 1e6
        except RequestError as error:
            for index, _ in items:
                responses[index] = self._error(str(error))
            counters.failures += len(items)
            return
        except Exception as error:  # noqa: BLE001  a member's runtime failure must not fail the pack
            message = f"model '{ident}' failed: {str(error).splitlines()[0][:300]}"
            for index, _ in items:
                responses[index] = self._error(message)
            counters.failures += len(items)
            return
        offset = 0
        for index, arrays in items:
            rows = arrays[0].shape[0]
            responses[index] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(out[offset:offset + rows]))
                for name, out in zip(member.output_names, outputs, strict=False)])
            offset += rows

    def _forward(self, module, batch: list[np.ndarray], static_batch: int | None) -> list[np.ndarray]:
        torch = self.torch
        rows = batch[0].shape[0]
        step = static_batch or rows
        chunks: list[list[np.ndarray]] = []
        with torch.inference_mode():
            for start in range(0, rows, step):
                part = [a[start:start + step] for a in batch]
                pad = step - part[0].shape[0] if static_batch else 0
                if pad:
                    part = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in part]
                result = module(*[torch.from_numpy(a).to(self.device) for a in part])
                if not isinstance(result, (tuple, list)):
                    result = (result,)
                chunks.append([r.detach().cpu().numpy()[:step - pad] for r in result])
        return [np.concatenate(parts) if len(parts) > 1 else parts[0] for parts in zip(*chunks, strict=False)]

    def finalize(self) -> None:
        self._flush_metrics(force=True)
        self.resident.clear()
