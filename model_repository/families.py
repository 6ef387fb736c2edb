"""Splitting an artifact into its architecture's program and the member's weights (at registration).

Runs inside the sandboxed validator child (control_plane/validation_worker.py), on the module that child
has just loaded and called once:

    artifact ──► program   the artifact with every parameter and buffer replaced by an empty tensor, saved
            │              canonically (model_repository/artifacts.py), so every member of one architecture
            │              writes the same bytes: code, graph, constants, attributes and the table below
            └► weights     the member's parameters and buffers in one flat, 64-byte aligned safetensors file

An architecture's id is the sha256 of (format, program sha256, tensor table): a program that differs in
anything but weights (code, graph, a constant, an attribute, a tensor's name, shape, dtype, kind or
requires_grad) is another architecture. The web process recomputes the id from the files it uploads
(`architecture_id`), so a compromised child cannot make another architecture's members run its program.

What cannot be split safely keeps the whole-artifact path, with the reason recorded: tensors that share
memory (tied weights), views and non-contiguous tensors, quantized tensors and TorchScript custom-class
objects (packed parameters), more than `MAX_PROGRAM_TENSOR_BYTES` of tensors that are not parameters or
buffers (constants baked in the code, plain tensor attributes: they would stay in the program and make
every member its own architecture), a torch.export graph that mutates state or takes custom objects, and
finally anything whose program with the weights bound back does not answer the example inputs bit for bit
like the artifact itself (checked here with the pack runtime's own binding code).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from model_repository.resources import project_path

# a checkout's, or the installed data (model_repository/resources.py)
RUNTIME_DIR = project_path("triton/backends/pack")
PROGRAM_SUFFIX = {"torchscript": ".pt", "torch_export": ".pt2"}
WEIGHTS_SUFFIX = ".safetensors"
MAX_PROGRAM_TENSOR_BYTES = 2**20


def runtime_module(name: str):
    """One of the pack runtime's modules (triton/backends/pack/NAME.py), imported by file: the folder
    `triton/` cannot be a package here (it would shadow OpenAI Triton, which torch imports)."""
    if name in sys.modules:
        return sys.modules[name]
    if name != "pack_weights":
        runtime_module("pack_weights")  # the others import it by name, as they do inside a pack
    spec = importlib.util.spec_from_file_location(name, RUNTIME_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Split:
    """The outcome of splitting one artifact."""

    ok: bool
    reason: str = ""  # why not (ok False): the member keeps the whole-artifact path
    program: str = ""  # file names inside the output folder
    weights: str = ""
    spec: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "program": self.program, "weights": self.weights,
                "spec": self.spec}


def spec_digest(fmt: str, spec: list[dict]) -> str:
    return hashlib.sha256(json.dumps({"format": fmt, "tensors": spec}, sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()


def architecture_id(fmt: str, program_sha256: str, spec: list[dict]) -> str:
    """The architecture's content address: program bytes and tensor table (never the weights)."""
    return hashlib.sha256(f"{fmt}\n{program_sha256}\n{spec_digest(fmt, spec)}".encode()).hexdigest()


def _entry(name: str, tensor, kind: str) -> dict:
    return {"name": name, "kind": kind, "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape), "requires_grad": bool(tensor.requires_grad)}


def _unsafe_tensors(torch, named: list[tuple[str, object]]) -> str | None:
    """Why these tensors cannot live in a flat weights file as they are (None: they can)."""
    seen: dict[int, str] = {}
    for name, tensor in named:
        if tensor.is_quantized:
            return f"'{name}' is a quantized tensor ({tensor.dtype}); quantized modules are served whole"
        if tensor.layout != torch.strided or tensor.device.type != "cpu":
            return f"'{name}' is not a dense CPU tensor ({tensor.layout}, {tensor.device})"
        if tensor.numel() and not tensor.is_contiguous():
            return f"'{name}' is not contiguous (a transposed or strided view)"
        if tensor.numel() == 0:
            continue
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            return (f"'{seen[pointer]}' and '{name}' share memory (tied weights); a program whose tensors "
                    "alias each other is served whole")
        seen[pointer] = name
        if str(tensor.dtype).removeprefix("torch.") not in runtime_module("pack_weights").DTYPE_CODES:
            return f"'{name}' has dtype {tensor.dtype}, which a safetensors file cannot hold"
    return None


def _script_mutation(module) -> str | None:
    """An attribute the TorchScript module's forward changes (prim::SetAttr, or an in-place op on a tensor
    read from an attribute), or None."""
    graph = module.forward.graph.copy()
    import torch

    torch._C._jit_pass_inline(graph)
    for node in graph.nodes():
        if node.kind() == "prim::SetAttr":
            return f"its forward assigns the attribute '{node.s('name')}'"
        if node.kind().startswith("aten::") and node.kind().endswith("_"):
            source = next(iter(node.inputs())).node()
            if source.kind() == "prim::GetAttr":
                return f"its forward changes the attribute '{source.s('name')}' in place ({node.kind()})"
    return None


def _export_mutation(program) -> str | None:
    """A lifted parameter, buffer or constant the exported graph changes in place, or None."""
    import torch

    lifted = {s.arg.name: s.target for s in program.graph_signature.input_specs
              if s.kind.name in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR")}
    for node in program.graph_module.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload) or not target._schema.is_mutable:
            continue
        for argument, value in zip(target._schema.arguments, node.args, strict=False):
            if argument.is_write and isinstance(value, torch.fx.Node) and value.name in lifted:
                return f"its graph changes '{lifted[value.name]}' in place ({target})"
    return None


def _archive_tensor_bytes(path: Path) -> int:
    """Bytes of tensor records left in a saved program (its constants and non-parameter attributes)."""
    with zipfile.ZipFile(path) as archive:
        return sum(info.file_size for info in archive.infolist()
                   if "/data/" in info.filename or "/constants/" in info.filename
                   if not info.filename.endswith((".pkl", ".json")))


def _custom_classes(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(b"__torch__.torch.classes" in archive.read(info) for info in archive.infolist()
                   if info.filename.endswith(".pkl") or "/code/" in info.filename)


def split_torchscript(torch, module, out: Path) -> Split:
    """Strip a loaded ScriptModule into a program and a weights file (the module is emptied in place)."""
    from torch._C import BufferDict, ModuleDict, ParameterDict

    from model_repository.artifacts import write_canonical_torchscript

    named: list[tuple[str, object, str]] = []

    def walk(c, prefix: str) -> None:
        for attribute, tensor in ParameterDict(c).items():
            named.append((prefix + attribute, tensor, "parameter"))
        for attribute, tensor in BufferDict(c).items():
            named.append((prefix + attribute, tensor, "buffer"))
        for attribute, child in ModuleDict(c).items():
            walk(child, f"{prefix}{attribute}.")

    walk(module._c, "")
    if not named:
        return Split(False, "the module has no parameters or buffers: nothing to share between members")
    problem = _unsafe_tensors(torch, [(n, t) for n, t, _ in named])
    if problem:
        return Split(False, problem)
    mutation = _script_mutation(module)
    if mutation:
        return Split(False, f"the module mutates state: {mutation}; a member's state could not stay its own over "
                            "stacked forwards, so it is served whole")
    spec = [_entry(name, tensor, kind) for name, tensor, kind in named]
    weights = {name: tensor.detach() for name, tensor, _ in named}
    weights_name, program_name = "weights" + WEIGHTS_SUFFIX, "program" + PROGRAM_SUFFIX["torchscript"]
    runtime_module("pack_weights").write_weights(out / weights_name, list(weights.items()))

    def strip(c, prefix: str) -> None:
        for attribute, tensor in list(ParameterDict(c).items()) + list(BufferDict(c).items()):
            c.setattr(attribute, torch.empty(0, dtype=tensor.dtype))
        for attribute, child in ModuleDict(c).items():
            strip(child, f"{prefix}{attribute}.")

    strip(module._c, "")
    write_canonical_torchscript(module, out / program_name)
    return _program_checked(out, program_name, weights_name, spec)


def split_export(torch, program, out: Path) -> Split:
    """Strip a loaded ExportedProgram into a program and a weights file (the program is emptied in place)."""
    from model_repository.artifacts import write_canonical_export

    signature = program.graph_signature
    kinds = {s.kind.name for s in signature.input_specs}
    unsupported = kinds - {"PARAMETER", "BUFFER", "CONSTANT_TENSOR", "USER_INPUT"}
    if unsupported:
        return Split(False, f"the program takes inputs of kind {', '.join(sorted(unsupported))} (custom objects "
                            "or effect tokens), which are served whole")
    mutating = [s.kind.name for s in signature.output_specs if s.kind.name != "USER_OUTPUT"]
    in_place = _export_mutation(program)
    if in_place:
        mutating.append(in_place)
    if mutating:
        return Split(False, f"the program mutates state ({', '.join(sorted(set(mutating)))}): a shared program "
                            "cannot keep one member's state apart from another's, so it is served whole")
    named: list[tuple[str, object, str, dict]] = []
    for entry in signature.input_specs:
        if entry.kind.name not in ("PARAMETER", "BUFFER"):
            continue
        source = program.state_dict if entry.target in program.state_dict else program.constants
        named.append((entry.target, source[entry.target], entry.kind.name.lower(), source))
    if not named:
        return Split(False, "the program has no parameters or buffers: nothing to share between members")
    problem = _unsafe_tensors(torch, [(n, t) for n, t, _, _ in named])
    if problem:
        return Split(False, problem)
    spec = [_entry(name, tensor, kind) for name, tensor, kind, _ in named]
    weights_name, program_name = "weights" + WEIGHTS_SUFFIX, "program" + PROGRAM_SUFFIX["torch_export"]
    runtime_module("pack_weights").write_weights(out / weights_name, [(n, t.detach()) for n, t, _, _ in named])
    for name, tensor, _kind, source in named:
        empty = torch.empty(0, dtype=tensor.dtype)
        source[name] = torch.nn.Parameter(empty, requires_grad=tensor.requires_grad) \
            if isinstance(tensor, torch.nn.Parameter) else empty
    program.example_inputs = None  # the exporter's example inputs differ per member and are not needed
    write_canonical_export(program, out / program_name)
    return _program_checked(out, program_name, weights_name, spec)


def _program_checked(out: Path, program_name: str, weights_name: str, spec: list[dict]) -> Split:
    left = _archive_tensor_bytes(out / program_name)
    if _custom_classes(out / program_name):
        return Split(False, "the module holds TorchScript custom-class objects (e.g. quantized packed parameters) "
                            "whose tensors are neither parameters nor buffers; it is served whole")
    if left > MAX_PROGRAM_TENSOR_BYTES:
        return Split(False, f"{left} bytes of tensors are neither parameters nor buffers (constants in the code or "
                            "plain tensor attributes); they would stay in the program and make each member its own "
                            "architecture, so it is served whole")
    return Split(True, program=program_name, weights=weights_name, spec=spec)


def verify(torch, split: Split, out: Path, fmt: str, inputs: list, expected: tuple) -> Split:
    """Bind the weights back to the program with the pack runtime's code and compare the outputs with the
    artifact's own, bit for bit; a split that does not reproduce them keeps the whole-artifact path."""
    programs = runtime_module("pack_programs")
    try:
        program = programs.load_program("check", out / split.program, fmt, split.spec)
        member = program.member(out / split.weights)
        with torch.inference_mode():
            got = member(*inputs)
    except Exception as error:  # noqa: BLE001  any failure means: not safely splittable
        return Split(False, f"the program with its weights bound back fails ({str(error).splitlines()[0][:200]})")
    got = got if isinstance(got, (tuple, list)) else (got,)
    for k, (a, b) in enumerate(zip(got, expected, strict=False)):
        if len(got) != len(expected) or a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            diff = (a.float() - b.float()).abs().max().item() if a.shape == b.shape else "shape"
            return Split(False, f"the program with its weights bound back does not reproduce output {k} bit for bit "
                                f"(largest difference {diff}); it is served whole")
    return split


@dataclass
class LocalSplit:
    """A split done in this process (trusted, e.g. generated models): its files and their identities."""

    split: Split
    split_format: str = "torchscript"
    architecture: str = ""
    program: Path | None = None
    weights: Path | None = None
    program_sha256: str = ""
    weights_sha256: str = ""
    weights_bytes: int = 0


def split_file(path: Path, fmt: str, inputs: list, out: Path) -> LocalSplit:
    """Split one artifact file in this process: load it, call it on `inputs` (tensors), split and verify.

    For artifacts this process trusts (the generator's, tests', benchmarks'); the control plane splits
    uploads in the sandboxed validator instead. `out/split.json` records the outcome: a second call with
    the same `out` reads it instead of splitting again.
    """
    import torch

    from model_repository.artifacts import file_sha256

    out = Path(out)
    record = out / "split.json"
    if record.exists():
        saved = json.loads(record.read_text())
        return LocalSplit(Split(**saved["split"]), saved["format"], saved["architecture"],
                          out / saved["split"]["program"] if saved["split"]["ok"] else None,
                          out / saved["split"]["weights"] if saved["split"]["ok"] else None,
                          saved["program_sha256"], saved["weights_sha256"], saved["weights_bytes"])
    out.mkdir(parents=True, exist_ok=True)
    source = torch.export.load(str(path)) if fmt == "torch_export" else torch.jit.load(str(path), map_location="cpu")
    module = source.module() if fmt == "torch_export" else source
    with torch.inference_mode():
        expected = module(*inputs)
    expected = tuple(expected) if isinstance(expected, (tuple, list)) else (expected,)
    split = split_export(torch, source, out) if fmt == "torch_export" else split_torchscript(torch, source, out)
    if split.ok:
        split = verify(torch, split, out, fmt, inputs, expected)
    done = LocalSplit(split, fmt)
    if split.ok:
        program, weights = out / split.program, out / split.weights
        program_sha, _ = file_sha256(program)
        weights_sha, weights_bytes = file_sha256(weights)
        done = LocalSplit(split, fmt, architecture_id(fmt, program_sha, split.spec), program, weights, program_sha,
                          weights_sha, weights_bytes)
    record.write_text(json.dumps({"split": split.to_json(), "format": fmt, "architecture": done.architecture,
                                  "program_sha256": done.program_sha256, "weights_sha256": done.weights_sha256,
                                  "weights_bytes": done.weights_bytes}))
    return done
