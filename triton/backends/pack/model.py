"""Pack runtime: one Triton Python-backend model that serves many unique PyTorch user models.

Why: every Python-backend model is its own stub process (~150-220 MB with torch). A pack hosts hundreds
of members in one process, loads each lazily on first request, keeps the hot ones resident within a byte
budget, and groups requests by member so each member runs one forward pass per batch.

Client contract (see docs/data-plane.md):
  * the member is named by the request parameter ``model_id`` (KServe v2 ``parameters``); a pack with a
    single member (dedicated mode) needs no parameter;
  * inputs ``INPUT__0`` ... and outputs ``OUTPUT__0`` ... follow the member's signature in members.json,
    in any of Triton's types FP32 FP16 BF16 INT64 INT32 INT8 UINT8 BOOL;
  * errors carry Triton's codes: an unknown member NOT_FOUND; a wrong shape, dtype, value range or NaN
    INVALID_ARGUMENT; a member still loading past the timeout, a full load queue or a member larger than
    the pack's budget UNAVAILABLE. Each request gets its own error; the others of the batch are served.
    Every error message starts with a machine-readable reason, ``[fleet:unknown_member] ...``
    (model_repository/contract.py `ErrorCode`), so callers match a code, never the wording.

Cold loads leave the request path. This is a *non-decoupled* model, so plain unary gRPC/HTTP clients work
unchanged, but ``execute`` may take a request's response sender, return ``None`` in that request's place
and answer it later from another thread (verified on Triton 2.51, ../shared/NOTES.md). Requests whose
member is resident are answered in ``execute``; requests for a cold member are handed to one loader thread,
which loads the member once for all of them and answers each with its single final response. A resident
neighbour is therefore never behind a load.

This file is copied verbatim into every pack; it depends only on torch, numpy and Triton's
``triton_python_backend_utils`` (so it keeps its own dtype table instead of importing the project's).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import hashlib
import io
import json
import os
import sys
import threading
import time
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

# The stub puts the server's working directory on sys.path. When that is a checkout of this project, its
# triton/ folder shadows OpenAI's `triton` package, which torch.export imports ("module 'triton' has no
# attribute 'language'"). Nothing here is meant to come from the server's working directory.
sys.path[:] = [p for p in sys.path if p not in ("", ".", os.getcwd())]
# The families runtime lives next to this file (pack_*.py); the stub already has this folder on sys.path, a
# process that imports model.py by its path (tests, benchmarks/pack_runtime.py) may not.
if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pack_programs  # noqa: E402  the families runtime: siblings of this file in the version folder
import pack_stacked  # noqa: E402
import pack_weights  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

MEMBERS_FILE = "members.json"
# Triton dtype -> numpy dtype; BF16 has none and travels through DLPack as a torch tensor.
NUMPY_DTYPES = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32,
                "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}
TORCH_DTYPE_NAMES = {"FP32": "float32", "FP16": "float16", "BF16": "bfloat16", "INT64": "int64",
                     "INT32": "int32", "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}
METRICS_FLUSH_SECONDS = 1.0
SWEEP_SECONDS = 0.05
# The data-plane contract (model_repository/contract.py); kept here because this file may not import the
# project. tests/data_plane/test_contract.py checks every copy against the contract.
MODEL_ID_PARAMETER = "model_id"
PROBE_MEMBER = "__fleet_probe__"
# Every error message starts with "[fleet:<reason>] ": a machine-readable reason that survives gRPC and HTTP
# (Triton carries only a status code and a message). Without an explicit reason, the status code's default.
ERROR_TAG = "[fleet:{}] "
ERROR_REASONS = ("unknown_member", "member_required", "invalid_input", "artifact_invalid", "over_budget",
                 "overloaded", "invalid_output", "internal")
DEFAULT_REASONS = {"NOT_FOUND": "unknown_member", "INVALID_ARGUMENT": "invalid_input",
                   "UNAVAILABLE": "overloaded", "INTERNAL": "internal"}


@dataclass(frozen=True)
class Knobs:
    """Runtime knobs, read from the pack's config.pbtxt parameters (all optional; defaults here)."""

    max_resident_bytes: int = 512 * 2**20  # the residency budget of this instance
    load_timeout_s: float = 60.0  # a request waits at most this long for its member to load
    max_waiting_per_member: int = 64  # requests queued behind one cold member
    max_waiting: int = 256  # requests queued behind all cold members of the pack
    failure_backoff_s: float = 5.0  # a failed member is not retried for this long, doubling ...
    failure_backoff_max_s: float = 300.0  # ... up to this
    verify_sha256: str = "never"  # "never" (size check only) or "once" (per file identity)
    # Device tier (gpu family on a GPU instance, inf2): bytes of members kept on the accelerator, a subset
    # of the host-resident ones. inf2: per NeuronCore (one instance per core).
    max_device_bytes: int = 2 * 2**30
    # A stand-in device for the GPU tier ("cpu" in tests): honoured only when set explicitly.
    device_tier_device: str = ""
    # Batches across members (pack_stacked.py): when a batch holds requests for at least `stack_members`
    # members of one architecture (0: never), those whose weights are at most `stack_max_member_bytes` run
    # as one forward over their stacked weights. Defaults measured on CPU (docs/benchmarks-families.md).
    stack_members: int = 12
    stack_max_member_bytes: int = 2**20

    @classmethod
    def from_params(cls, params: dict[str, str]) -> Knobs:
        values = {}
        for name, kind in (("max_resident_bytes", int), ("load_timeout_s", float),
                           ("max_waiting_per_member", int), ("max_waiting", int),
                           ("failure_backoff_s", float), ("failure_backoff_max_s", float),
                           ("verify_sha256", str), ("max_device_bytes", int),
                           ("device_tier_device", str), ("stack_members", int), ("stack_max_member_bytes", int)):
            raw = params.get(name, "")
            if raw != "":
                values[name] = kind(raw)
        return cls(**values)


class RequestError(Exception):
    """A problem with one request; becomes that request's error response with a Triton error code."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT", reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason or DEFAULT_REASONS.get(code, "internal")


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: str  # Triton name
    shape: tuple[int, ...]  # without the batch dimension
    value_range: tuple[int, int] | None


@dataclass(frozen=True)
class OutputSpec:
    name: str
    dtype: str | None  # Triton name; None: whatever the module returns (older members.json)


@dataclass
class Member:
    """One user model in the pack, as declared in members.json."""

    id: str
    path: Path | None  # None: no artifact for this compute family (e.g. not compiled for inf2)
    sha256: str
    bytes: int | None  # the artifact's size as declared; checked before every load
    format: str  # "torchscript" | "torch_export"
    inputs: list[InputSpec]
    outputs: list[OutputSpec]
    static_batch: int | None = None  # Neuron artifacts run one compiled batch size
    # Family members (docs/data-plane.md): `path` is the member's weights file and its program is its
    # architecture's, loaded once per stub. None: a whole artifact.
    architecture: str | None = None


@dataclass(frozen=True)
class ArchitectureEntry:
    """An architecture as members.json declares it: its program file and its tensor table."""

    id: str
    path: Path
    sha256: str
    bytes: int | None
    format: str
    tensors: list


@dataclass
class Resident:
    """A member in host RAM. `module` is what host RAM keeps: the module itself (cpu family; gpu, where
    it is the same object a promotion moves in place), or a compiled artifact's bytes (inf2)."""

    module: object
    cost: int  # what the budget is charged: max(RSS growth at load, parameter + buffer bytes)
    parameter_bytes: int
    rss_growth: int


@dataclass
class Waiter:
    """A request for a cold member, answered later through its response sender."""

    sender: object
    inputs: list  # np.ndarray or torch.Tensor (BF16), copied out of the request
    deadline: float


@dataclass
class Failure:
    """Negative cache entry: a member whose load failed is refused at once until ``retry_at``."""

    error: RequestError
    retry_at: float
    backoff_s: float


@dataclass
class MemberCounters:
    requests: int = 0
    failures: int = 0
    compute_us: float = 0.0
    loads: int = 0
    evictions: int = 0
    load_seconds: float = 0.0
    load_failures: int = 0


@dataclass
class PackCounters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    loads: int = 0
    load_seconds: float = 0.0
    shed: int = 0
    stacked_forwards: int = 0  # forwards that ran several members of one architecture at once
    stacked_members: int = 0  # members served by those forwards
    stacked_fallbacks: int = 0  # stacked forwards that failed and ran one forward per member instead


@dataclass
class MetricsBuffer:
    """Counters buffered in the stub and flushed about once a second (and after every load).

    Each metric update is an IPC round trip to the server, so updating per request would cost more than
    the inference itself for small models.
    """

    pending: dict[str, MemberCounters] = field(default_factory=lambda: defaultdict(MemberCounters))
    pack: PackCounters = field(default_factory=PackCounters)
    gauges: dict[str, dict[str, int]] = field(default_factory=dict)  # member -> gauge kind -> value
    last_flush: float = field(default_factory=time.monotonic)


@dataclass
class TierCounters:
    """Counters of one tier since the last metrics flush."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    loads: int = 0  # promotions into this tier
    load_seconds: float = 0.0


def tensor_bytes(module) -> int:
    """Parameter and buffer bytes of a torch module (0 for anything else, e.g. an artifact's bytes)."""
    if not hasattr(module, "parameters"):
        return 0
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


class GpuMover:
    """GPU tier mover: moves a host-resident module onto a torch device and back, in place.

    `nn.Module.to` (and ScriptModule's) moves the tensors of the same object, so while a member is on the
    GPU its host copy is gone (host RAM is still charged for it: the copy comes back on demotion); a
    demotion is a device->host copy and a promotion a host->device copy, neither touches disk. The charge
    is the parameter and buffer bytes, or what `torch.cuda.memory_allocated` grew by, if more. With a
    stand-in device ("cpu", tests only) both moves are no-ops and the charge is the tensor bytes.
    """

    tier = "gpu"

    def __init__(self, torch, device: str) -> None:
        self.torch, self.device = torch, device
        self.cuda = device.startswith("cuda")

    def estimate(self, payload) -> int:
        return tensor_bytes(payload)

    def _allocated(self) -> int:
        return self.torch.cuda.memory_allocated(self.device) if self.cuda else 0

    def promote(self, payload) -> tuple[object, int]:
        before = self._allocated()
        try:
            module = payload.to(self.device)
            if self.cuda:
                self.torch.cuda.synchronize(self.device)
        except Exception:
            payload.to("cpu")  # e.g. CUDA out of memory half-way: the host copy must stay whole
            raise
        return module, max(tensor_bytes(module), self._allocated() - before)

    def demote(self, module) -> None:
        module.to("cpu")
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.empty_cache()  # give the freed blocks back, so the next promotion measures true

    def release(self, module) -> None:
        """The member leaves host RAM too: its device copy goes with the last reference."""


class NeuronMover:
    """NeuronCore tier mover: host RAM keeps a compiled artifact's bytes; promotion deserialises them
    (`torch.jit.load(io.BytesIO(...))`, which places the model on this instance's NeuronCore, the one
    in NEURON_RT_VISIBLE_CORES, unless the artifact was traced with lazy loading); demotion drops the
    module, which unloads it from the core. The charge is the artifact's size (a compiled NEFF carries
    the weights): the Neuron runtime offers no cheap per-model HBM reading to take instead."""

    tier = "neuron"

    def __init__(self, torch) -> None:
        self.torch = torch

    def estimate(self, payload) -> int:
        return len(payload)

    def promote(self, payload) -> tuple[object, int]:
        module = self.torch.jit.load(io.BytesIO(payload))
        module.eval()
        return module, len(payload)

    def demote(self, module) -> None:
        """Nothing to copy back: the bytes never left host RAM; dropping the module unloads the core."""

    def release(self, module) -> None:
        """As demote."""


@dataclass
class OnDevice:
    module: object
    bytes: int


class DeviceTier:
    """The host-resident members of one pack instance that are also on its accelerator, LRU within a byte
    budget. One class for the GPU and the NeuronCore tiers: the mover is the only device-specific part.

    Why this shape: a member evicted from the device stays in host RAM, so coming back costs one copy, not
    a disk load. Moves run in the pack's loader thread (never in `execute`): a request whose member is on
    the device is answered while another member moves. A member in use by a forward pass (`acquire` ..
    `release`) is never demoted under it: a GPU demotion moves the tensors of the very object being run.
    Lock order: the pack's lock, then this tier's.
    """

    def __init__(self, mover, budget_bytes: int, wait_s: float = 60.0) -> None:
        self.mover, self.name, self.budget_bytes, self.wait_s = mover, mover.tier, budget_bytes, wait_s
        self.lock = threading.Condition()
        self.entries: OrderedDict[str, OnDevice] = OrderedDict()
        self.resident_bytes = 0
        self.in_use: dict[str, int] = defaultdict(int)
        self.known: dict[str, int] = {}  # measured charge of members promoted before
        self.counters = TierCounters()

    # -- request path (execute) --
    def acquire(self, ident: str):
        """The member's device module, marked in use (then `release` it), or None: a miss."""
        with self.lock:
            entry = self.entries.get(ident)
            if entry is None:
                self.counters.misses += 1
                return None
            self.entries.move_to_end(ident)
            self.in_use[ident] += 1
            self.counters.hits += 1
            return entry.module

    def count_miss(self) -> None:
        with self.lock:
            self.counters.misses += 1

    def release(self, ident: str, times: int = 1) -> None:
        with self.lock:
            self.in_use[ident] -= times
            if self.in_use[ident] <= 0:
                del self.in_use[ident]
                self.lock.notify_all()

    def contains(self, ident: str) -> bool:
        with self.lock:
            return ident in self.entries

    # -- loader thread --
    def needed(self, ident: str, payload) -> int:
        """What a promotion of this member is expected to charge."""
        return self.known.get(ident) or self.mover.estimate(payload)

    def promote(self, ident: str, payload):
        """Put a host-resident member on the device (LRU-evicting others) and return its device module.

        Raises ValueError when the member alone exceeds the budget, TimeoutError when every member that
        would have to make room stays in use for `wait_s`.
        """
        with self.lock:
            entry = self.entries.get(ident)
            if entry is not None:
                self.entries.move_to_end(ident)
                return entry.module
        needed = self.needed(ident, payload)
        if needed > self.budget_bytes:
            raise ValueError(f"needs {needed} bytes on the {self.name}, budget {self.budget_bytes}")
        self._make_room(needed, keep=ident, wait=True)
        started = time.perf_counter()
        module, charged = self.mover.promote(payload)
        seconds = time.perf_counter() - started
        self.known[ident] = charged
        if charged > self.budget_bytes:
            self.mover.demote(module)
            raise ValueError(f"needs {charged} bytes on the {self.name} (measured), budget {self.budget_bytes}")
        with self.lock:
            self.entries[ident] = OnDevice(module, charged)
            self.resident_bytes += charged
            self.counters.loads += 1
            self.counters.load_seconds += seconds
        self._make_room(0, keep=ident, wait=False)  # the measured charge may exceed the estimate
        return module

    def _make_room(self, needed: int, keep: str, wait: bool) -> None:
        deadline = time.monotonic() + self.wait_s
        victims: list[OnDevice] = []
        with self.lock:
            while self.resident_bytes + needed > self.budget_bytes:
                victim = next((k for k in self.entries if k != keep and k not in self.in_use), None)
                if victim is None:
                    if not wait or not any(k != keep for k in self.entries):
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"the {self.name} tier is full of members in use")
                    self.lock.wait(timeout=left)
                    continue
                entry = self.entries.pop(victim)
                self.resident_bytes -= entry.bytes
                self.counters.evictions += 1
                victims.append(entry)
        for entry in victims:  # outside the lock: requests for members on the device go on meanwhile
            self.mover.demote(entry.module)

    def drop(self, ident: str) -> bool:
        """The member leaves host RAM, so it leaves this tier too (no copy back: nothing will hold it)."""
        with self.lock:
            entry = self.entries.pop(ident, None)
            if entry is None:
                return False
            self.resident_bytes -= entry.bytes
            self.counters.evictions += 1
        self.mover.release(entry.module)
        return True

    def take_counters(self) -> tuple[TierCounters, int, int]:
        """Counters since the last call, resident bytes and members (for the metrics flush)."""
        with self.lock:
            counters, self.counters = self.counters, TierCounters()
            return counters, self.resident_bytes, len(self.entries)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.resident_bytes = 0


def _parse_architectures(version_dir: Path) -> dict[str, ArchitectureEntry]:
    document = json.loads((version_dir / MEMBERS_FILE).read_text())
    return {ident: ArchitectureEntry(id=ident, path=version_dir / entry["program"]["path"],
                                     sha256=entry["program"].get("sha256", ""), bytes=entry["program"].get("bytes"),
                                     format=entry.get("format", "torchscript"), tensors=entry["tensors"])
            for ident, entry in document.get("architectures", {}).items()}


def _parse_members(version_dir: Path, family: str) -> dict[str, Member]:
    document = json.loads((version_dir / MEMBERS_FILE).read_text())
    members = {}
    for ident, entry in document["members"].items():
        # Inferentia needs members compiled by `fleet compile --family inf2`; other families run the
        # portable artifact (TorchScript or torch.export).
        artifact = entry.get("artifacts", {}).get(family)
        portable = artifact is None and family != "inf2"
        if portable:
            artifact = {"path": entry["file"], "sha256": entry["sha256"], "bytes": entry.get("bytes")}
        members[ident] = Member(
            id=ident,
            path=version_dir / artifact["path"] if artifact else None,
            sha256=artifact.get("sha256", "") if artifact else "",
            bytes=artifact.get("bytes") if artifact else None,
            format=entry.get("format", "torchscript") if portable else "torchscript",
            inputs=[InputSpec(name=i["name"], dtype=_dtype(ident, i["dtype"]), shape=tuple(i["shape"][1:]),
                              value_range=tuple(i["value_range"]) if i.get("value_range") else None)
                    for i in entry["inputs"]],
            outputs=[OutputSpec(name=o["name"], dtype=_dtype(ident, o["dtype"]) if o.get("dtype") else None)
                     for o in entry["outputs"]],
            static_batch=artifact.get("static_batch") if artifact else None,
            architecture=entry.get("architecture") if portable else None,
        )
    return members


def _dtype(ident: str, name: str) -> str:
    if name not in TORCH_DTYPE_NAMES:
        raise ValueError(f"{MEMBERS_FILE}: model '{ident}' declares dtype '{name}'; the pack runtime "
                         f"supports {', '.join(TORCH_DTYPE_NAMES)}")
    return name


def _page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/statm (cheap: one small read)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _page_size()
    except (OSError, IndexError, ValueError):
        return 0


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.pack = args["model_name"]
        self.family = params.get("family", "cpu")
        self.generation = params.get("generation", "")
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.knobs = Knobs.from_params(params)
        self.max_resident_bytes = self.knobs.max_resident_bytes
        self.device = self._select_device(args, params)

        import torch  # after NEURON_RT_VISIBLE_CORES is set, so the Neuron runtime sees only our cores

        self.torch = torch
        self.torch_dtypes = {name: getattr(torch, attr) for name, attr in TORCH_DTYPE_NAMES.items()}
        torch.set_num_threads(int(params.get("torch_threads", "1")))
        if self.family == "inf2":
            import torch_neuronx  # noqa: F401  registers the Neuron ops TorchScript artifacts need

        self.tier = self._device_tier()
        self.members = _parse_members(version_dir, self.family)
        self.architectures = _parse_architectures(version_dir)
        self.programs = pack_programs.ProgramCache(rss_bytes)  # one per architecture, charged once
        self.program_bytes = 0  # what the loaded programs are charged, inside the host budget
        self.stack_failed: set[str] = set()  # architectures whose stacked forward failed once (logged once)
        if any(m.format == "torch_export" for m in self.members.values()):
            # torch.export.load imports ~100 MB of Python modules on first use: do it now, so that this
            # one-time growth is not charged to the first member that loads.
            import torch._export.serde.serialize  # noqa: F401
        self.single_member = next(iter(self.members)) if len(self.members) == 1 else None
        # Residency state, shared by execute() and the loader thread: guarded by self.lock.
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.resident: OrderedDict[str, Resident] = OrderedDict()
        self.resident_bytes = 0
        self.waiting: dict[str, list[Waiter]] = {}
        self.waiting_total = 0
        self.load_queue: deque[str] = deque()
        self.loading: str | None = None
        self.failures: dict[str, Failure] = {}
        self.known_cost: dict[str, int] = {}  # measured cost of members loaded before (a better estimate)
        self.too_big: dict[str, int] = {}  # members whose tensors alone exceed the budget: refused for good
        self.too_big_device: dict[str, str] = {}  # members larger than the device tier's budget: the reason
        self.cost_per_file_byte = 1.0  # running mean of cost / file size, for members not loaded before
        self.verified: set[tuple] = set()  # file identities whose sha256 was checked (verify_sha256=once)
        self.stopping = False
        self.trim = _malloc_trim()
        self.baseline_rss = rss_bytes()
        self.metrics_lock = threading.Lock()
        self._init_metrics()
        for ident in filter(None, params.get("preload", "").split(",")):
            if ident in self.members:
                try:
                    self._make_ready(ident)
                except RequestError as error:
                    self._remember_failure(ident, error)
        self.loader = threading.Thread(target=self._loader_loop, name=f"{self.pack}-loader", daemon=True)
        self.sweeper = threading.Thread(target=self._sweeper_loop, name=f"{self.pack}-sweeper", daemon=True)
        self.loader.start()
        self.sweeper.start()
        self._flush_metrics(force=True)

    def _select_device(self, args: dict, params: dict) -> str:
        if self.family == "inf2":
            # One NeuronCore per instance: instance N of this pack owns core offset+N.
            instance = int(args["model_instance_name"].rsplit("_", 1)[-1] or 0)
            offset = int(params.get("neuron_core_offset", "0"))
            os.environ["NEURON_RT_VISIBLE_CORES"] = str(offset + instance)
            return "cpu"  # Neuron artifacts take CPU tensors and run on the visible core
        if self.knobs.device_tier_device:
            return self.knobs.device_tier_device  # a stand-in device for the GPU tier (tests)
        if args.get("model_instance_kind") == "GPU":
            return f"cuda:{args['model_instance_device_id']}"
        return "cpu"

    def _device_tier(self) -> DeviceTier | None:
        """The accelerator tier of this instance, if it has one: NeuronCore (inf2), GPU (an instance of
        kind GPU), or a stand-in device named by `device_tier_device` (tests)."""
        wait_s = self.knobs.load_timeout_s
        if self.family == "inf2":
            return DeviceTier(NeuronMover(self.torch), self.knobs.max_device_bytes, wait_s)
        if self.device.startswith("cuda"):
            # CUDA's context costs hundreds of MB of host memory: create it now, before the empty stub's
            # memory is measured, so that it is not charged to the first member promoted.
            self.torch.empty(1, device=self.device)
        if self.device.startswith("cuda") or self.knobs.device_tier_device:
            return DeviceTier(GpuMover(self.torch, self.device), self.knobs.max_device_bytes, wait_s)
        return None

    # ---- metrics -------------------------------------------------------------------------------
    def _init_metrics(self) -> None:
        family = pb_utils.MetricFamily
        counter, gauge = family.COUNTER, family.GAUGE
        self.metric_families = {
            "requests": family("fleet_member_requests_total", "Inference requests per pack member", counter),
            "failures": family("fleet_member_failures_total", "Failed inference requests per pack member",
                               counter),
            "compute_us": family("fleet_member_compute_duration_us_total",
                                 "Microseconds spent in the member's forward pass, summed over requests",
                                 counter),
            "loads": family("fleet_member_loads_total", "Times a member was loaded into memory", counter),
            "evictions": family("fleet_member_evictions_total", "Times a member was evicted", counter),
            "load_seconds": family("fleet_member_load_seconds_total", "Seconds spent loading a member",
                                   counter),
            "load_failures": family("fleet_member_load_failures_total",
                                    "Load attempts that failed (then refused from the negative cache)", counter),
            "resident_bytes": family("fleet_member_resident_bytes",
                                     "Bytes a resident member is charged: max(RSS growth at load, tensor "
                                     "bytes); 0 when not resident", gauge),
            "parameter_bytes": family("fleet_member_parameter_bytes",
                                      "Parameter and buffer bytes of a member at its last load", gauge),
            "rss_growth_bytes": family("fleet_member_rss_growth_bytes",
                                       "Growth of the stub's resident memory across the member's last load",
                                       gauge),
        }
        # Families must outlive their metrics, so they are kept on self.
        self.pack_families = {
            "resident_bytes": family("fleet_pack_resident_bytes", "Bytes charged for all resident members",
                                     gauge),
            "resident_members": family("fleet_pack_resident_members", "Resident members of a pack", gauge),
            "budget_bytes": family("fleet_pack_budget_bytes", "Residency budget of a pack instance", gauge),
            "stub_rss_bytes": family("fleet_pack_stub_rss_bytes", "Resident memory of the pack's stub process",
                                     gauge),
            "waiting_requests": family("fleet_pack_waiting_requests", "Requests waiting for a member to load",
                                       gauge),
            "hits": family("fleet_pack_hits_total", "Requests whose member was resident", counter),
            "misses": family("fleet_pack_misses_total", "Requests whose member had to be loaded", counter),
            "evictions": family("fleet_pack_evictions_total", "Members evicted to make room", counter),
            "loads": family("fleet_pack_loads_total", "Member loads", counter),
            "load_seconds": family("fleet_pack_load_seconds_total", "Seconds spent loading members", counter),
            "shed": family("fleet_pack_shed_total",
                           "Requests refused UNAVAILABLE (load queue full or load timeout)", counter),
            "stacked_forwards": family("fleet_pack_stacked_forwards_total",
                                       "Forwards that ran several members of one architecture over stacked "
                                       "weights", counter),
            "stacked_members": family("fleet_pack_stacked_members_total",
                                      "Members served by forwards over stacked weights", counter),
            "stacked_fallbacks": family("fleet_pack_stacked_fallbacks_total",
                                        "Stacked forwards that failed and ran one forward per member", counter),
            "programs": family("fleet_pack_programs", "Architecture programs loaded in the stub (one each, "
                               "shared by its members)", gauge),
            "program_bytes": family("fleet_pack_program_bytes", "Bytes charged for the loaded programs (once "
                                    "per architecture)", gauge),
        }
        labels = {"pack": self.pack}
        self.pack_metrics = {kind: fam.Metric(labels=labels) for kind, fam in self.pack_families.items()}
        self.pack_metrics["budget_bytes"].set(self.max_resident_bytes)
        # The same questions for every tier, labelled pack and tier (host; gpu or neuron where there is one):
        # the control plane reads these to show what each server holds per tier.
        self.tier_families = {
            "resident_bytes": family("fleet_tier_resident_bytes", "Bytes charged for the members in a tier",
                                     gauge),
            "resident_members": family("fleet_tier_resident_members", "Members resident in a tier", gauge),
            "budget_bytes": family("fleet_tier_budget_bytes", "Byte budget of a tier in a pack instance", gauge),
            "hits": family("fleet_tier_hits_total", "Requests whose member was resident in the tier", counter),
            "misses": family("fleet_tier_misses_total", "Requests whose member was not resident in the tier",
                             counter),
            "evictions": family("fleet_tier_evictions_total", "Members evicted from the tier", counter),
            "loads": family("fleet_tier_loads_total", "Members loaded (promoted) into the tier", counter),
            "load_seconds": family("fleet_tier_load_seconds_total",
                                   "Seconds spent loading (promoting) members into the tier", counter),
        }
        tiers = ["host"] + ([self.tier.name] if self.tier is not None else [])
        self.tier_metrics = {(tier, kind): fam.Metric(labels={"pack": self.pack, "tier": tier})
                             for tier in tiers for kind, fam in self.tier_families.items()}
        self.tier_metrics[("host", "budget_bytes")].set(self.max_resident_bytes)
        if self.tier is not None:
            self.tier_metrics[(self.tier.name, "budget_bytes")].set(self.tier.budget_bytes)
        self.metrics: dict[tuple[str, str], object] = {}
        self.buffer = MetricsBuffer()

    def _metric(self, kind: str, member: str):
        key = (kind, member)
        metric = self.metrics.get(key)
        if metric is None:
            metric = self.metric_families[kind].Metric(labels={"pack": self.pack, "member": member})
            self.metrics[key] = metric
        return metric

    def _set_gauges(self, member: str, **values: int) -> None:
        """Record member gauges under self.lock; they reach Triton at the next flush."""
        self.buffer.gauges.setdefault(member, {}).update(values)

    def _flush_metrics(self, force: bool = False) -> None:
        """Hand the buffered counters and the current gauges to Triton.

        Triton shares a custom metric between every instance that makes one of the same family and labels:
        on a reload, the new instance and the old one it replaces write the same gauges. So an instance
        that is stopping adds its counters but leaves the gauges alone: they describe its successor.
        """
        now = time.monotonic()
        if not force and now - self.buffer.last_flush < METRICS_FLUSH_SECONDS:
            return
        with self.lock:
            set_gauges = not self.stopping
            pending, pack, gauges = self.buffer.pending, self.buffer.pack, self.buffer.gauges
            self.buffer.pending, self.buffer.pack, self.buffer.gauges = defaultdict(MemberCounters), \
                PackCounters(), {}
            self.buffer.last_flush = now
            resident_bytes, resident_members = self.resident_bytes, len(self.resident)
            programs, program_bytes = len(self.programs), self.program_bytes
            waiting = self.waiting_total
        with self.metrics_lock:  # execute() and the loader thread may both flush
            for member, counters in pending.items():
                for kind in ("requests", "failures", "compute_us", "loads", "evictions", "load_seconds",
                             "load_failures"):
                    value = getattr(counters, kind)
                    if value:
                        self._metric(kind, member).increment(value)
            for kind in ("hits", "misses", "evictions", "loads", "load_seconds", "shed", "stacked_forwards",
                         "stacked_members", "stacked_fallbacks"):
                value = getattr(pack, kind)
                if value:
                    self.pack_metrics[kind].increment(value)
            self._flush_tier("host", TierCounters(pack.hits, pack.misses, pack.evictions, pack.loads,
                                                  pack.load_seconds), resident_bytes, resident_members, set_gauges)
            if self.tier is not None:
                self._flush_tier(self.tier.name, *self.tier.take_counters(), set_gauges)
            if not set_gauges:
                return
            for member, values in gauges.items():
                for kind, value in values.items():
                    self._metric(kind, member).set(value)
            self.pack_metrics["resident_bytes"].set(resident_bytes)
            self.pack_metrics["resident_members"].set(resident_members)
            self.pack_metrics["waiting_requests"].set(waiting)
            self.pack_metrics["stub_rss_bytes"].set(rss_bytes())
            self.pack_metrics["programs"].set(programs)
            self.pack_metrics["program_bytes"].set(program_bytes)

    def _flush_tier(self, tier: str, counters: TierCounters, resident_bytes: int, resident_members: int,
                    set_gauges: bool = True) -> None:
        for kind in ("hits", "misses", "evictions", "loads", "load_seconds"):
            value = getattr(counters, kind)
            if value:
                self.tier_metrics[(tier, kind)].increment(value)
        if set_gauges:
            self.tier_metrics[(tier, "resident_bytes")].set(resident_bytes)
            self.tier_metrics[(tier, "resident_members")].set(resident_members)

    # ---- loading -------------------------------------------------------------------------------
    def _check_file(self, member: Member, what: str = "") -> None:
        """A cheap integrity check before loading from the file's path.

        Why not sha256 on every load: the sync (model_repository/s3_sync.py) verifies every object's
        sha256 as it downloads and moves a complete model into place atomically, so a file in a loaded
        pack is the verified one unless something rewrote it afterwards. Hashing again would cost as much
        as the load itself (414 MiB: 211 ms sha256 vs 220-340 ms torch.jit.load, ../shared/NOTES.md). So
        the size is checked against members.json on every load (catches truncation and the wrong file),
        and with ``verify_sha256=once`` the full hash is checked once per file identity (device, inode,
        mtime, size) for the life of the stub.
        """
        what = what or ("weights file" if member.architecture else "artifact")
        try:
            stat = member.path.stat()
        except OSError as error:
            raise RequestError(f"model '{member.id}': {what} {member.path.name} cannot be read "
                               f"({error.strerror}); re-sync the repository", "INTERNAL",
                               "artifact_invalid") from None
        if member.bytes is not None and stat.st_size != member.bytes:
            raise RequestError(f"model '{member.id}': {what} {member.path.name} has {stat.st_size} bytes, "
                               f"{MEMBERS_FILE} says {member.bytes}; it is truncated or was replaced: "
                               "re-sync and reload the pack", "INTERNAL", "artifact_invalid")
        if self.knobs.verify_sha256 != "once" or not member.sha256:
            return
        identity = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if identity in self.verified:
            return
        digest = hashlib.sha256()
        with open(member.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != member.sha256:
            raise RequestError(f"model '{member.id}': {what} {member.path.name} does not match its sha256 "
                               f"in {MEMBERS_FILE}; it changed on disk since the sync or is corrupt: re-sync "
                               "and reload the pack", "INTERNAL", "artifact_invalid")
        self.verified.add(identity)

    def _load_module(self, member: Member):
        """What host RAM keeps of a member, from disk: the module, loaded from the file's path (several
        times faster than from bytes, ../shared/NOTES.md); on inf2 the compiled artifact's bytes, which
        the NeuronCore tier deserialises onto the core (and again after each eviction from it)."""
        if member.path is None:
            raise RequestError(f"model '{member.id}' has no {self.family} artifact: run "
                               f"`fleet compile --family {self.family}` and re-sync the repository",
                               "UNAVAILABLE", "artifact_invalid")
        self._check_file(member)
        if self.family == "inf2":
            try:
                return member.path.read_bytes()
            except OSError as error:
                raise RequestError(f"model '{member.id}': artifact {member.path.name} cannot be read "
                                   f"({error.strerror}); re-sync the repository", "INTERNAL",
                                   "artifact_invalid") from None
        torch = self.torch
        # With a device tier the module loads into host RAM; the tier copies it to the device.
        device = "cpu" if self.tier is not None else self.device
        if member.architecture is not None:
            return self._load_family_member(member, device)
        try:
            if member.format == "torch_export":
                module = torch.export.load(str(member.path)).module()
                if device != "cpu":
                    module = module.to(device)
            else:
                module = torch.jit.load(str(member.path), map_location=device)
                module.eval()
        except Exception as error:  # noqa: BLE001  any loader failure is this member's problem only
            kind = "torch.export program" if member.format == "torch_export" else "TorchScript module"
            raise RequestError(f"model '{member.id}': artifact is not a loadable {kind} "
                               f"({str(error).splitlines()[0][:200] if str(error) else type(error).__name__})",
                               "INTERNAL", "artifact_invalid") from None
        return module

    def _load_family_member(self, member: Member, device: str):
        """A family member: its architecture's program (loaded once per stub) bound to its weights file,
        which is mapped, not read: no code is deserialised and the GIL is held for milliseconds."""
        program = self._program(member)
        try:
            bound = program.member(member.path)
        except pack_weights.WeightsError as error:
            raise RequestError(f"model '{member.id}': {error}; re-sync the repository and reload the pack",
                               "INTERNAL", "artifact_invalid") from None
        return bound.to(device) if device != "cpu" else bound

    def _program(self, member: Member):
        """The program of the member's architecture, loaded and charged to the budget once."""
        program = self.programs.get(member.architecture)
        if program is not None:
            return program
        entry = self.architectures.get(member.architecture)
        if entry is None:
            raise RequestError(f"model '{member.id}': its architecture {member.architecture[:12]} is not in "
                               f"{MEMBERS_FILE}; rebuild the pack", "INTERNAL", "artifact_invalid")
        program_member = Member(id=member.id, path=entry.path, sha256=entry.sha256, bytes=entry.bytes,
                                format=entry.format, inputs=[], outputs=[])
        self._check_file(program_member, what=f"program of architecture {entry.id[:12]}")
        try:
            program = self.programs.load(entry.id, entry.path, entry.format, entry.tensors, entry.bytes)
        except pack_programs.ProgramError as error:
            raise RequestError(f"model '{member.id}': {error}", "INTERNAL", "artifact_invalid") from None
        with self.lock:
            self.program_bytes = self.programs.charged
        return program

    def _over_budget(self, member: Member, needed: int, how: str) -> RequestError:
        mib = 2**20
        return RequestError(
            f"model '{member.id}' needs {needed / mib:.0f} MB ({how}), the pack's budget is "
            f"{self.max_resident_bytes / mib:.0f} MB: place it in a pack with a larger max_resident_bytes "
            "(a server with more memory) instead of this one", "UNAVAILABLE", "over_budget")

    def _make_room(self, needed: int, keep: str | None = None) -> None:
        """Evict least recently used members until `needed` more bytes fit in the budget.

        Called BEFORE a load (so the stub's peak stays within the budget) and after it. Memory the stub
        holds beyond the empty stub and the members' charges (allocator fragmentation, caches) counts too,
        so that the RSS, not only the accounting, follows the budget. Programs (one per architecture) are
        charged once; one that no resident member uses any more is evicted only when evicting members did
        not make room (a program costs a code load to come back, a member only a mapping).
        """
        unaccounted = max(0, rss_bytes() - self.baseline_rss - self.resident_bytes - self.program_bytes)
        evicted = 0
        with self.lock:
            while self.resident and self.resident_bytes + self.program_bytes + unaccounted + needed \
                    > self.max_resident_bytes:
                victim = next(iter(self.resident))
                if victim == keep:
                    if len(self.resident) == 1:
                        break
                    self.resident.move_to_end(victim)
                    continue
                self.resident_bytes -= self.resident.pop(victim).cost  # no reference left: freed here
                if self.tier is not None:
                    self.tier.drop(victim)  # a member that leaves host RAM leaves the device too
                self.buffer.pending[victim].evictions += 1
                self.buffer.pack.evictions += 1
                self._set_gauges(victim, resident_bytes=0)
                evicted += 1
            if self.resident_bytes + self.program_bytes + unaccounted + needed > self.max_resident_bytes:
                used = {self.members[ident].architecture for ident in self.resident}
                if keep is not None:
                    used.add(self.members[keep].architecture)
                freed = self.programs.evict_unused(used)
                self.program_bytes -= freed
                evicted += bool(freed)
        if evicted:
            self._release_memory()

    def _release_memory(self) -> None:
        """Give freed tensors back to the OS so the stub's RSS follows the budget, not its peak.

        An evicted module's tensors are freed by reference counting as soon as it leaves `resident`
        (measured: RSS back to the empty stub's without any collection), so only the young generation is
        collected: a full `gc.collect()` in a stub with torch imported took 650-820 ms holding the GIL,
        longer than most loads. ctypes releases the GIL while `malloc_trim` runs (12-70 ms).
        """
        gc.collect(0)
        if self.trim is not None:
            self.trim(0)

    def _load_into_budget(self, ident: str) -> Resident:
        member = self.members[ident]
        if member.bytes is not None and member.bytes > self.max_resident_bytes:
            raise self._over_budget(member, member.bytes, "its artifact's size")
        # Estimate before loading: a previous measurement, else the file size times what loads in this
        # stub have cost per file byte so far (tensors dominate a file; the program adds some).
        estimate = self.known_cost.get(ident) or int((member.bytes or 0) * (
            1.0 if member.architecture else self.cost_per_file_byte))  # a weights file maps 1:1
        self._make_room(estimate)
        started = time.perf_counter()
        if member.architecture is not None and member.path is not None:
            self._program(member)  # charged once, on its own: not part of this member's growth
        before = rss_bytes()
        module = self._load_module(member)
        growth = max(0, rss_bytes() - before)
        seconds = time.perf_counter() - started
        parameter_bytes = len(module) if isinstance(module, bytes) else tensor_bytes(module)
        cost = max(growth, parameter_bytes)
        self.known_cost[ident] = cost
        if member.bytes and member.architecture is None:
            ratio = min(3.0, max(1.0, cost / member.bytes))
            self.cost_per_file_byte = 0.8 * self.cost_per_file_byte + 0.2 * ratio
        with self.lock:
            self.buffer.pending[ident].loads += 1
            self.buffer.pending[ident].load_seconds += seconds
            self.buffer.pack.loads += 1
            self.buffer.pack.load_seconds += seconds
            self._set_gauges(ident, parameter_bytes=parameter_bytes, rss_growth_bytes=growth)
        if parameter_bytes > self.max_resident_bytes:
            # Its tensors alone do not fit: final. (Resident growth alone is not: it includes allocator
            # noise, e.g. a first load's runtime set-up; such a member stays resident alone instead.)
            del module
            self._release_memory()
            self.too_big[ident] = parameter_bytes
            raise self._over_budget(member, parameter_bytes, f"measured: {growth / 2**20:.0f} MB resident "
                                    f"growth, {parameter_bytes / 2**20:.0f} MB of tensors")
        entry = Resident(module=module, cost=cost, parameter_bytes=parameter_bytes, rss_growth=growth)
        with self.lock:
            self.resident[ident] = entry
            self.resident_bytes += cost
            self._set_gauges(ident, resident_bytes=cost)
        self._make_room(0, keep=ident)  # the measured cost may exceed the estimate
        return entry

    def _make_ready(self, ident: str):
        """The module to run: loaded into host RAM from disk if it is not there, then, where the instance
        has a device tier, promoted onto the device (a copy from host RAM, no disk read)."""
        with self.lock:
            entry = self.resident.get(ident)
        if entry is None:
            entry = self._load_into_budget(ident)
        if self.tier is None:
            return entry.module
        try:
            return self.tier.promote(ident, entry.module)
        except ValueError:
            needed = self.tier.known.get(ident) or self.tier.needed(ident, entry.module)
            message = (f"model '{ident}' needs {needed / 2**20:.0f} MB on the {self.tier.name}, the pack's "
                       f"{self.tier.name} budget is {self.tier.budget_bytes / 2**20:.0f} MB: place it in a pack "
                       "with a larger max_device_bytes (a server with more device memory) instead of this one")
            with self.lock:
                self.too_big_device[ident] = message
            raise RequestError(message, "UNAVAILABLE", "over_budget") from None
        except TimeoutError:
            raise RequestError(f"model '{ident}' waited {self.tier.wait_s:.0f} s for room on the "
                               f"{self.tier.name}: every member there stayed in use; retry later",
                               "UNAVAILABLE") from None

    def _remember_failure(self, ident: str, error: RequestError) -> None:
        """Negative cache: refuse at once for a while, doubling the wait after each failed retry."""
        with self.lock:
            self.buffer.pending[ident].load_failures += 1
            previous = self.failures.get(ident)
            backoff = (min(previous.backoff_s * 2, self.knobs.failure_backoff_max_s) if previous
                       else self.knobs.failure_backoff_s)
            self.failures[ident] = Failure(error=error, retry_at=time.monotonic() + backoff, backoff_s=backoff)

    def _loader_loop(self) -> None:
        """One loader thread: loads queued cold members one at a time and answers their waiters."""
        while True:
            with self.wake:
                while not self.load_queue and not self.stopping:
                    self.wake.wait()
                if self.stopping:
                    return
                ident = self.load_queue.popleft()
                self.loading = ident
            try:
                module = self._make_ready(ident)
            except RequestError as error:
                self._remember_failure(ident, error)
                self._answer_waiters(ident, error=error)
            except Exception as error:  # noqa: BLE001  never let the loader thread die
                failure = RequestError(f"model '{ident}' failed to load: {str(error)[:300]}", "INTERNAL")
                self._remember_failure(ident, failure)
                self._answer_waiters(ident, error=failure)
            else:
                with self.lock:
                    self.failures.pop(ident, None)
                self._answer_waiters(ident, module=module)
            finally:
                with self.lock:
                    self.loading = None
            self._flush_metrics(force=True)

    def _answer_waiters(self, ident: str, module=None, error: RequestError | None = None) -> None:
        with self.lock:
            waiters = self.waiting.pop(ident, [])
            self.waiting_total -= len(waiters)
        if not waiters:
            return
        if error is not None:
            with self.lock:
                self.buffer.pending[ident].failures += len(waiters)
            for waiter in waiters:
                self._send(waiter.sender, self._error(error))
            return
        responses: list = [None] * len(waiters)
        self._run_forward(ident, module, [(k, w.inputs) for k, w in enumerate(waiters)], responses)
        for waiter, response in zip(waiters, responses, strict=True):
            self._send(waiter.sender, response)

    @staticmethod
    def _send(sender, response) -> None:
        try:
            sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception:  # noqa: BLE001, S110  the client went away: nothing left to answer
            pass

    def _sweeper_loop(self) -> None:
        """Answers UNAVAILABLE to requests that waited longer than load_timeout_s (the loader may be busy)."""
        while True:
            with self.wake:
                # Idle packs sleep until a request waits (then _admit notifies); no wake-ups on the hot path.
                self.wake.wait(timeout=SWEEP_SECONDS if self.waiting_total else None)
                if self.stopping:
                    return
                now = time.monotonic()
                expired: list[tuple[str, Waiter]] = []
                for ident, waiters in self.waiting.items():
                    keep = [w for w in waiters if w.deadline > now]
                    if len(keep) != len(waiters):
                        expired += [(ident, w) for w in waiters if w.deadline <= now]
                        self.waiting[ident] = keep
                self.waiting_total -= len(expired)
                self.buffer.pack.shed += len(expired)
                for ident, _ in expired:
                    self.buffer.pending[ident].failures += 1
            for ident, waiter in expired:
                state = "is still loading" if self.loading == ident else "is queued behind other loads"
                self._send(waiter.sender, self._error(RequestError(
                    f"model '{ident}' {state} in pack '{self.pack}' after {self.knobs.load_timeout_s:.0f} s; "
                    "retry later", "UNAVAILABLE")))

    # ---- requests ------------------------------------------------------------------------------
    def _member_id(self, request) -> str:
        raw = request.parameters()
        ident = json.loads(raw).get(MODEL_ID_PARAMETER) if raw else None
        if ident is None:
            if self.single_member is not None:
                return self.single_member
            raise RequestError(f"pack '{self.pack}' hosts {len(self.members)} models: name one with the "
                               f"request parameter '{MODEL_ID_PARAMETER}'", "INVALID_ARGUMENT", "member_required")
        if not isinstance(ident, str) or ident not in self.members:
            raise RequestError(f"model '{ident}' is not in pack '{self.pack}'; ask the control plane "
                               "where it is served (GET /api/v1/models/{id})", "NOT_FOUND")
        return ident

    def _input_array(self, member: Member, spec: InputSpec, tensor):
        """The request's tensor as numpy (zero-copy), or as torch through DLPack for BF16."""
        if spec.dtype == "BF16":
            try:
                value = self.torch.from_dlpack(tensor.to_dlpack())
            except Exception as error:  # noqa: BLE001  e.g. a non-BF16 tensor numpy cannot express
                raise RequestError(f"model '{member.id}' input '{spec.name}' must be BF16 ({error})") from None
            if value.dtype != self.torch.bfloat16:
                raise RequestError(f"model '{member.id}' input '{spec.name}' must be BF16, got "
                                   f"{str(value.dtype).removeprefix('torch.')}")
            return value
        try:
            array = tensor.as_numpy()
        except Exception:  # noqa: BLE001  as_numpy cannot express BF16
            raise RequestError(f"model '{member.id}' input '{spec.name}' must be {spec.dtype}, got BF16") from None
        if array.dtype != NUMPY_DTYPES[spec.dtype]:
            got = next((k for k, v in NUMPY_DTYPES.items() if np.dtype(v) == array.dtype), array.dtype.name)
            raise RequestError(f"model '{member.id}' input '{spec.name}' must be {spec.dtype}, got {got}")
        return array

    def _inputs(self, request, member: Member) -> list:
        arrays = []
        for spec in member.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
            if tensor is None:
                raise RequestError(f"model '{member.id}' needs input '{spec.name}'")
            array = self._input_array(member, spec, tensor)
            if array.ndim != len(spec.shape) + 1 or not _shape_matches(tuple(array.shape[1:]), spec.shape):
                expected = "[batch, " + ", ".join(map(str, spec.shape)) + "]"
                raise RequestError(f"model '{member.id}' input '{spec.name}' must have shape {expected}, "
                                   f"got {list(array.shape)}")
            size = array.numel() if spec.dtype == "BF16" else array.size
            if spec.value_range is not None and size:
                low, high = spec.value_range
                least, most = int(array.min()), int(array.max())
                if least < low or most >= high:
                    raise RequestError(f"model '{member.id}' input '{spec.name}' values must lie in "
                                       f"[{low}, {high}), got [{least}, {most}]")
            if spec.dtype == "BF16":
                if not bool(self.torch.isfinite(array).all()):
                    raise RequestError(f"model '{member.id}' input '{spec.name}' contains NaN or infinity")
            elif array.dtype.kind == "f" and not np.isfinite(array).all():
                raise RequestError(f"model '{member.id}' input '{spec.name}' contains NaN or infinity")
            arrays.append(array)
        return arrays

    @staticmethod
    def _error(error: RequestError):
        # pb_utils spells INVALID_ARGUMENT as INVALID_ARG (Triton's C name); gRPC clients see INVALID_ARGUMENT.
        code = getattr(pb_utils.TritonError, {"INVALID_ARGUMENT": "INVALID_ARG"}.get(error.code, error.code), None)
        message = ERROR_TAG.format(error.reason) + str(error)
        triton_error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
        return pb_utils.InferenceResponse(output_tensors=[], error=triton_error)

    def _admit(self, ident: str, request, inputs: list) -> tuple[object | None, RequestError | None]:
        """Under self.lock: the resident module, or queue the request behind the member's load.

        Returns (module, None) for a hit, (None, error) for a refusal, (None, None) when the request was
        handed to the loader (its response sender now belongs to the loader thread).
        """
        entry = self.resident.get(ident)
        if entry is not None:
            self.resident.move_to_end(ident)
            self.buffer.pack.hits += 1
            if self.tier is None:
                return entry.module, None
            module = self.tier.acquire(ident)  # counts the device tier's hit or miss
            if module is not None:
                return module, None
            if ident in self.too_big_device:
                return None, RequestError(self.too_big_device[ident], "UNAVAILABLE", "over_budget")
            # In host RAM, not on the device: queued for a promotion (a copy from RAM, no disk read).
        else:
            failure = self.failures.get(ident)
            if failure is not None and time.monotonic() < failure.retry_at:
                return None, failure.error
            member = self.members[ident]
            if member.bytes is not None and member.bytes > self.max_resident_bytes:
                return None, self._over_budget(member, member.bytes, "its artifact's size")
            if ident in self.too_big:  # its tensors were measured over the budget at an earlier load: final
                return None, self._over_budget(member, self.too_big[ident],
                                               "its tensors, measured at its last load")
            if ident in self.too_big_device:
                return None, RequestError(self.too_big_device[ident], "UNAVAILABLE", "over_budget")
            self.buffer.pack.misses += 1
            if self.tier is not None:
                self.tier.count_miss()
        queued = self.waiting.get(ident, [])
        if len(queued) >= self.knobs.max_waiting_per_member or self.waiting_total >= self.knobs.max_waiting:
            self.buffer.pack.shed += 1
            return None, RequestError(
                f"model '{ident}' is loading in pack '{self.pack}' and its load queue is full "
                f"({len(queued)} waiting for it, {self.waiting_total} in the pack); retry later",
                "UNAVAILABLE")
        # Copy the inputs: the request's tensors live in shared memory tied to this execute() call.
        copies = [a.clone() if isinstance(a, self.torch.Tensor) else np.array(a, copy=True) for a in inputs]
        waiter = Waiter(sender=request.get_response_sender(), inputs=copies,
                        deadline=time.monotonic() + self.knobs.load_timeout_s)
        self.waiting.setdefault(ident, []).append(waiter)
        self.waiting_total += 1
        if ident != self.loading and ident not in self.load_queue:
            self.load_queue.append(ident)
            self.wake.notify_all()
        elif self.waiting_total == 1:
            self.wake.notify_all()  # the sweeper sleeps while nothing waits
        return None, None

    def execute(self, requests):
        responses: list = [None] * len(requests)
        groups: dict[str, list[tuple[int, list]]] = defaultdict(list)
        modules: dict[str, object] = {}
        for index, request in enumerate(requests):
            ident = None
            try:
                ident = self._member_id(request)
                inputs = self._inputs(request, self.members[ident])
            except RequestError as error:
                with self.lock:
                    if ident is not None:
                        self.buffer.pending[ident].requests += 1
                        self.buffer.pending[ident].failures += 1
                responses[index] = self._error(error)
                continue
            with self.lock:
                self.buffer.pending[ident].requests += 1
                module, error = self._admit(ident, request, inputs)
                if error is not None:
                    self.buffer.pending[ident].failures += 1
            if error is not None:
                responses[index] = self._error(error)
            elif module is not None:
                modules[ident] = module
                groups[ident].append((index, inputs))
        try:
            stacks, alone = self._stack_plan(groups, modules)
            for idents in stacks:
                self._run_stacked(idents, modules, groups, responses)
            for ident in alone:
                self._run_forward(ident, modules[ident], groups[ident], responses)
        finally:
            if self.tier is not None:  # every request served from the device acquired its member once
                for ident, items in groups.items():
                    self.tier.release(ident, len(items))
        self._flush_metrics()
        return responses

    def _run_forward(self, ident: str, module, items: list[tuple[int, list]], responses: list) -> None:
        """One forward pass for every request to this member in the batch."""
        member = self.members[ident]
        try:
            started = time.perf_counter()
            outputs = self._forward(module, self._batch(member, items), member.static_batch)
            self._check_outputs(member, outputs)
            elapsed_us = (time.perf_counter() - started) * 1e6
        except RequestError as error:
            self._fail(ident, items, responses, error)
            return
        except Exception as error:  # noqa: BLE001  a member's runtime failure must not fail the pack
            message = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            self._fail(ident, items, responses, RequestError(f"model '{ident}' failed: {message}", "INTERNAL"))
            return
        self._respond(ident, items, outputs, responses, elapsed_us)

    def _batch(self, member: Member, items: list[tuple[int, list]]) -> list:
        return [_concat([arrays[i] for _, arrays in items], self.torch) if len(items) > 1 else items[0][1][i]
                for i in range(len(member.inputs))]

    def _respond(self, ident: str, items: list[tuple[int, list]], outputs: list, responses: list,
                 elapsed_us: float) -> None:
        member = self.members[ident]
        with self.lock:
            self.buffer.pending[ident].compute_us += elapsed_us
        offset = 0
        for index, arrays in items:
            rows = arrays[0].shape[0]
            responses[index] = pb_utils.InferenceResponse(output_tensors=[
                self._output_tensor(spec.name, out[offset:offset + rows])
                for spec, out in zip(member.outputs, outputs, strict=False)])
            offset += rows

    # ---- batches across members (pack_stacked.py) ------------------------------------------------
    def _stack_plan(self, groups: dict[str, list], modules: dict[str, object]) -> tuple[list[list[str]], list[str]]:
        """Which members of this batch run as one forward over stacked weights (lists of members of one
        architecture with equal row counts), and which alone."""
        minimum = self.knobs.stack_members
        if minimum < 2 or len(groups) < minimum:
            return [], list(groups)
        candidates: dict[tuple, dict[str, int]] = defaultdict(dict)
        alone = []
        for ident, items in groups.items():
            member, module = self.members[ident], modules[ident]
            if isinstance(module, pack_programs.BoundMember) and member.static_batch is None \
                    and module.weight_bytes <= self.knobs.stack_max_member_bytes:
                rows = sum(arrays[0].shape[0] for _, arrays in items)
                candidates[(member.architecture, module.device)][ident] = rows
            else:
                alone.append(ident)
        stacks = []
        for rows in candidates.values():
            grouped, rest = pack_stacked.plan_groups(rows, minimum)
            stacks += grouped
            alone += rest
        return stacks, alone

    def _run_stacked(self, idents: list[str], modules: dict[str, object], groups: dict[str, list],
                     responses: list) -> None:
        """Members of one architecture as one forward; any failure falls back to one forward each."""
        torch = self.torch
        try:
            started = time.perf_counter()
            batches = []
            for ident in idents:
                tensors = [_aligned(a if isinstance(a, torch.Tensor) else torch.from_numpy(a))
                           for a in self._batch(self.members[ident], groups[ident])]
                batches.append([t.to(self.device) for t in tensors] if self.device != "cpu" else tensors)
            with torch.inference_mode():
                results = pack_stacked.forward([modules[ident] for ident in idents], batches)
            outputs = {ident: [_to_host(r.detach(), torch) for r in result]
                       for ident, result in zip(idents, results, strict=True)}
            for ident in idents:
                self._check_outputs(self.members[ident], outputs[ident])
            elapsed_us = (time.perf_counter() - started) * 1e6 / len(idents)
        except Exception as error:  # noqa: BLE001  e.g. an op without a batching rule: the members run alone
            architecture = self.members[idents[0]].architecture
            if architecture not in self.stack_failed:
                self.stack_failed.add(architecture)
                pb_utils.Logger.log_warn(f"pack {self.pack}: architecture {architecture[:12]} cannot run over "
                                         f"stacked weights ({str(error).splitlines()[0][:200]}); its members run "
                                         "one forward each")
            with self.lock:
                self.buffer.pack.stacked_fallbacks += 1
            for ident in idents:
                self._run_forward(ident, modules[ident], groups[ident], responses)
            return
        with self.lock:
            self.buffer.pack.stacked_forwards += 1
            self.buffer.pack.stacked_members += len(idents)
        for ident in idents:
            self._respond(ident, groups[ident], outputs[ident], responses, elapsed_us)

    def _fail(self, ident: str, items: list, responses: list, error: RequestError) -> None:
        for index, _ in items:
            responses[index] = self._error(error)
        with self.lock:
            self.buffer.pending[ident].failures += len(items)

    def _check_outputs(self, member: Member, outputs: list) -> None:
        for spec, out in zip(member.outputs, outputs, strict=False):
            if spec.dtype is None:
                continue
            numpy_dtype = NUMPY_DTYPES.get(spec.dtype)
            if isinstance(out, np.ndarray):
                ok = out.dtype == numpy_dtype
            else:  # a torch tensor: numpy has no such dtype (BF16)
                ok = spec.dtype == "BF16" and out.dtype == self.torch.bfloat16
            if not ok:
                raise RequestError(f"model '{member.id}' output '{spec.name}' is {out.dtype}, its signature in "
                                   f"{MEMBERS_FILE} says {spec.dtype}: re-register it with the right "
                                   "signature", "INTERNAL", "invalid_output")

    @staticmethod
    def _output_tensor(name: str, value):
        if isinstance(value, np.ndarray):
            return pb_utils.Tensor(name, np.ascontiguousarray(value))
        return pb_utils.Tensor.from_dlpack(name, value.contiguous())  # BF16: numpy cannot hold it

    def _forward(self, module, batch: list, static_batch: int | None) -> list:
        """Runs the module; outputs come back as numpy arrays, or torch tensors where numpy has no dtype."""
        torch = self.torch
        rows = batch[0].shape[0]
        step = static_batch or rows
        chunks: list[list] = []
        with torch.inference_mode():
            for start in range(0, rows, step):
                part = [a[start:start + step] for a in batch]
                pad = step - part[0].shape[0] if static_batch else 0
                if pad:
                    part = [_concat([a, a[-1:].repeat_interleave(pad, 0) if isinstance(a, torch.Tensor)
                                     else np.repeat(a[-1:], pad, axis=0)], torch) for a in part]
                tensors = [_aligned(a if isinstance(a, torch.Tensor) else torch.from_numpy(a)) for a in part]
                if self.device != "cpu":
                    tensors = [t.to(self.device) for t in tensors]
                result = module(*tensors)
                if not isinstance(result, (tuple, list)):
                    result = (result,)
                chunks.append([_to_host(r.detach(), torch)[:step - pad] for r in result])
        return [_concat(parts, torch) if len(parts) > 1 else parts[0] for parts in zip(*chunks, strict=False)]

    def finalize(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify_all()
            waiters = [(ident, w) for ident, ws in self.waiting.items() for w in ws]
            self.waiting.clear()
            self.waiting_total = 0
        for ident, waiter in waiters:
            self._send(waiter.sender, self._error(RequestError(
                f"pack '{self.pack}' is unloading; model '{ident}' was not served: retry", "UNAVAILABLE")))
        self.loader.join(timeout=30)
        self.sweeper.join(timeout=5)
        self._flush_metrics(force=True)
        with self.lock:
            self.resident.clear()
        if self.tier is not None:
            self.tier.clear()


def _shape_matches(actual: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return all(e == -1 or a == e for a, e in zip(actual, expected, strict=True))


def _concat(parts: list, torch):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return torch.cat(parts)


def _aligned(tensor):
    """The tensor in 64-byte aligned memory (a copy only where it is not): a request's tensor lies in shared
    memory at whatever offset the transport left it, and CPU kernels take another path for data that is not
    16-byte aligned, so the same input gave outputs differing in the last bit (docs/data-plane.md)."""
    return tensor if tensor.data_ptr() % 64 == 0 else tensor.clone()


def _to_host(tensor, torch):
    """numpy where it can hold the dtype (zero-copy on CPU), else the torch tensor (BF16)."""
    tensor = tensor.cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor
    return tensor.numpy()
