"""Triton model configurations for each compute family, built on Triton's own protobuf schema.

One repository serves every family: a model directory holds `config.pbtxt` (Graviton/CPU, the default)
and `configs/gpu.pbtxt`, `configs/inf2.pbtxt`; a server picks its family with `--model-config-name`.
Building the protobuf (rather than formatting text) means a misspelt field fails here, not on a server.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from model_repository.formats import DTYPES, SUFFIX
from model_repository.manifest import Architecture, ModelEntry, TensorSpec  # noqa: F401

Family = Literal["cpu", "gpu", "inf2"]
FAMILIES: tuple[Family, ...] = ("cpu", "gpu", "inf2")
# Every dtype a signature may declare, as Triton's config enum; a dtype missing here fails at import.
TRITON_TYPES = {"FP32": pb.TYPE_FP32, "FP16": pb.TYPE_FP16, "BF16": pb.TYPE_BF16, "INT64": pb.TYPE_INT64,
                "INT32": pb.TYPE_INT32, "INT8": pb.TYPE_INT8, "UINT8": pb.TYPE_UINT8, "BOOL": pb.TYPE_BOOL}
assert set(TRITON_TYPES) == set(DTYPES), "formats.DTYPES and the Triton type table disagree"
_DTYPES = TRITON_TYPES
# pack kinds are stored in a 64-character column and become part of pack (Triton model) names
MAX_KIND_CHARS = 40

# Pack inputs are the widest signature its members share: same rank and dtype, free sizes. Each
# member's exact shape is checked per request by the pack runtime.
PACK_INPUTS: dict[Architecture, tuple[str, list[int]]] = {
    "mlp": ("FP32", [-1]),
    "cnn": ("FP32", [3, -1, -1]),
    "text": ("INT64", [-1]),
}


@dataclass(frozen=True)
class PackSettings:
    """Knobs that shape a pack's Triton config; defaults are the measured sweet spot on 2 cores."""

    max_batch_size: int = 64
    max_queue_delay_us: int = 500  # dynamic batching: 3.3k -> 5.2k rps measured (docs/data-plane.md)
    max_resident_bytes: int = 256 * 2**20
    # gpu and inf2 packs: bytes of members each instance keeps on its device (the GPU; on inf2 its
    # NeuronCore), a subset of the host-resident ones, LRU. The control plane overrides it per replica with
    # the pack's share of the server's device budget (control_plane/placement.device_budget); this default
    # applies where none is known. Members evicted from the device stay in host RAM (docs/data-plane.md).
    max_device_bytes: int = 2 * 2**30
    torch_threads: int = 1
    cpu_instances: int = 1
    neuron_cores: int = 2  # inf2.xlarge has 2 NeuronCores; one pack instance per core
    dynamic_batching: bool = True
    preload: tuple[str, ...] = ()
    # Pack runtime: how long and how many requests may wait for a cold member (then UNAVAILABLE), and
    # whether loads re-hash files the sync already verified ("never" | "once"); see docs/data-plane.md.
    load_timeout_s: float = 60.0
    max_waiting_per_member: int = 64
    max_waiting: int = 256
    verify_sha256: str = "never"
    # Architecture families (docs/data-plane.md): split members travel as weights files plus one program per
    # architecture (False: every member as its whole artifact, today's baseline path), and batches across
    # members of one architecture run as one forward when at least `stack_members` (0: never) with weights
    # of at most `stack_max_member_bytes` are in one batch. Defaults from docs/benchmarks-families.md.
    families: bool = True
    stack_members: int = 12
    stack_max_member_bytes: int = 2**20
    generation: int | None = None  # the pack's generation; the control plane reads it back after a load


def _tensor(config_list, name: str, dtype: str, dims: list[int]) -> None:
    tensor = config_list.add()
    tensor.name = name
    tensor.data_type = _DTYPES[dtype]
    tensor.dims.extend(dims)


def _common(config: pb.ModelConfig, family: Family, settings: PackSettings) -> None:
    config.backend = "python"
    config.max_batch_size = settings.max_batch_size
    if settings.dynamic_batching:
        config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
    group = config.instance_group.add()
    if family == "gpu":
        group.kind = pb.ModelInstanceGroup.KIND_GPU
        group.count = 1
    elif family == "inf2":
        # KIND_MODEL: the backend, not Triton, owns device placement; model.py pins each instance to
        # one NeuronCore through NEURON_RT_VISIBLE_CORES, and instances never outnumber cores.
        group.kind = pb.ModelInstanceGroup.KIND_MODEL
        group.count = settings.neuron_cores
    else:
        group.kind = pb.ModelInstanceGroup.KIND_CPU
        group.count = settings.cpu_instances
    params = {
        "family": family,
        "max_resident_bytes": str(settings.max_resident_bytes),
        "torch_threads": str(settings.torch_threads),
        "preload": ",".join(settings.preload),
        "load_timeout_s": str(settings.load_timeout_s),
        "max_waiting_per_member": str(settings.max_waiting_per_member),
        "max_waiting": str(settings.max_waiting),
        "verify_sha256": settings.verify_sha256,
        "stack_members": str(settings.stack_members),
        "stack_max_member_bytes": str(settings.stack_max_member_bytes),
    }
    if settings.generation is not None:
        params["generation"] = str(settings.generation)
    if family in ("gpu", "inf2"):
        params["max_device_bytes"] = str(settings.max_device_bytes)
    if family == "inf2":
        params["neuron_core_offset"] = "0"
    for key, value in params.items():
        config.parameters[key].string_value = value


def pack_inputs_for(entry: ModelEntry) -> list[tuple[str, str, list[int]]]:
    """The pack-level inputs a member needs: generated architectures have a tuned shape, any other
    signature keeps each input's dtype and rank with free sizes."""
    if entry.architecture in PACK_INPUTS:
        dtype, dims = PACK_INPUTS[entry.architecture]  # type: ignore[index]
        return [("INPUT__0", dtype, dims)]
    return [(s.name, s.dtype, [-1] * (len(s.shape) - 1)) for s in entry.inputs]


def pack_outputs_for(entry: ModelEntry) -> list[tuple[str, str, list[int]]]:
    """The pack-level outputs: each output's dtype and rank, free sizes (members of a pack share them)."""
    return [(s.name, s.dtype, [-1] * (len(s.shape) - 1)) for s in entry.outputs]


def pack_kind(entry: ModelEntry) -> str:
    """Members of one pack share this: input dtypes and ranks, and output dtypes and ranks (names follow
    from the order: INPUT__k, OUTPUT__k). Long signatures get a digest so the kind fits its column and a
    Triton model name."""
    ins = "_".join(f"{s.dtype.lower()}r{len(s.shape)}" for s in entry.inputs)
    outs = "_".join(f"{s.dtype.lower()}r{len(s.shape)}" for s in entry.outputs)
    kind = f"{ins}-o{outs}"
    if len(kind) > MAX_KIND_CHARS:
        kind = f"sig{hashlib.sha256(kind.encode()).hexdigest()[:16]}"
    return kind


def pack_config(name: str, inputs: list[tuple[str, str, list[int]]], outputs: list[tuple[str, str, list[int]]],
                family: Family, settings: PackSettings) -> str:
    """A pack: many members with the same input and output structure behind one Python-backend model."""
    config = pb.ModelConfig(name=name)
    for input_name, dtype, dims in inputs:
        _tensor(config.input, input_name, dtype, dims)
    for output_name, dtype, dims in outputs:
        _tensor(config.output, output_name, dtype, dims)
    _common(config, family, settings)
    return text_format.MessageToString(config)


def _exact(specs: list[TensorSpec]) -> list[tuple[str, str, list[int]]]:
    return [(s.name, s.dtype, s.shape[1:]) for s in specs]


def dedicated_config(name: str, entry: ModelEntry, family: Family, settings: PackSettings) -> str:
    """One Triton model for one user model, with its exact signature.

    On G4dn this is NGC Triton's libtorch backend (`pytorch_libtorch`), which serves the TorchScript
    file directly; elsewhere, and for torch.export programs (which libtorch cannot load), it is the pack
    runtime with a single member.
    """
    config = pb.ModelConfig(name=name)
    for spec_name, dtype, dims in _exact(entry.inputs):
        _tensor(config.input, spec_name, dtype, dims)
    for spec_name, dtype, dims in _exact(entry.outputs):
        _tensor(config.output, spec_name, dtype, dims)
    if family == "gpu" and entry.format == "torchscript":
        config.platform = "pytorch_libtorch"
        config.default_model_filename = "model" + SUFFIX["torchscript"]
        config.max_batch_size = settings.max_batch_size
        if settings.dynamic_batching:
            config.dynamic_batching.max_queue_delay_microseconds = settings.max_queue_delay_us
        group = config.instance_group.add()
        group.kind = pb.ModelInstanceGroup.KIND_GPU
        group.count = 1
        return text_format.MessageToString(config)
    _common(config, family, settings)
    return text_format.MessageToString(config)


def parse_config(text: str) -> pb.ModelConfig:
    """Parse a config.pbtxt; raises ValueError naming the line that is wrong."""
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as error:
        raise ValueError(f"malformed model config: {error}") from None
