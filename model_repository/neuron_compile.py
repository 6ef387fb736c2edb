"""Compiles pack members for AWS Inferentia2 with `torch_neuronx.trace`.

Neuron executes static shapes, so each member is traced at one batch size; the pack runtime pads a
smaller batch and splits a larger one. Both artifact formats compile: a TorchScript member is traced as
loaded, a torch.export program through its `.module()` (an nn.Module that torch_neuronx.trace accepts);
the result is always a TorchScript file (`members/<id>.inf2.pt`), which is what torch_neuronx saves.
This step needs the Neuron SDK (torch-neuronx), which exists only for Inf2/Trn1 hosts and their build
images; elsewhere it stops with a clear message instead of producing artifacts that could not run.

Which torch does what (docs/eks.md, "Inferentia2: which torch saves, which loads"): the source artifact was
saved by the project's torch (2.13); this step loads it with the torch of the image it runs in (the inf2
image: the torch torch-neuronx pins, older), traces it, and saves the compiled TorchScript with that same
torch, which is also the one that serves it. A member its torch cannot load is reported, left without an
inf2 artifact, and the others go on. Re-running skips members already compiled from the same source bytes
at the same batch size.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model_repository.formats import INTEGER_DTYPES, TORCH_DTYPES
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


def example_tensors(entry: ModelEntry, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of the member's declared dtypes and shapes at a fixed batch (free sizes become 8)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in entry.inputs:
        shape = [batch] + [d if d > 0 else 8 for d in spec.shape[1:]]
        dtype = getattr(torch, TORCH_DTYPES[spec.dtype])
        if spec.dtype == "BOOL":
            tensors.append(torch.randint(0, 2, shape, generator=generator).to(torch.bool))
        elif spec.dtype in INTEGER_DTYPES:
            low, high = spec.value_range or (0, 2)
            tensors.append(torch.randint(low, high, shape, generator=generator, dtype=dtype))
        else:
            tensors.append(torch.randn(shape, generator=generator).to(dtype))
    return tuple(tensors)


def load_member(path: Path, fmt: str, architecture: dict | None = None, version_dir: Path | None = None
                ) -> torch.nn.Module:
    """A member artifact as a module in eval mode, whichever format it was saved in. A family member (its
    weights file at `path`, `architecture` its entry in members.json) is rebuilt from its architecture's
    program and its weights: Neuron compiles each member into an artifact of its own (weights included)."""
    if architecture is not None:
        from model_repository.families import runtime_module

        tensors = runtime_module("pack_weights").map_weights(path, architecture["tensors"])
        program = Path(version_dir) / architecture["program"]["path"]
        if fmt == "torch_export":
            module = torch.export.load(str(program)).module()
            for name, tensor in tensors.items():  # parameters and buffers, persistent or not
                owner, _, leaf = name.rpartition(".")
                parent = module.get_submodule(owner) if owner else module
                if leaf in parent._parameters:
                    parent._parameters[leaf] = tensor
                else:
                    parent._buffers[leaf] = tensor.detach()
            return module
        programs = runtime_module("pack_programs")
        loaded = programs.load_program("compile", program, fmt, architecture["tensors"])
        bound = programs._bound_script(loaded.module._c, loaded.plan, tensors)
        return torch.jit._recursive.wrap_cpp_module(bound).eval()
    if fmt == "torch_export":
        return torch.export.load(str(path)).module()
    return torch.jit.load(str(path)).eval()


@dataclass
class CompileReport:
    """What one `fleet compile` did, member by member."""

    torch_version: str
    compiled: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already compiled from the same source and batch
    failed: dict[str, str] = field(default_factory=dict)  # member id -> why, in one line


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


def compile_repository(repository: Path, static_batch: int = 8,
                       on_progress: Callable[[int], None] | None = None,
                       trace: Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], torch.nn.Module] | None = None,
                       ) -> CompileReport:
    """Trace every member of every pack under `repository` for inf2; members.json records each artifact.

    `trace` defaults to torch_neuronx.trace (a test passes a stand-in; nothing else should).
    """
    if trace is None:
        trace = require_torch_neuronx().trace
    report = CompileReport(torch_version=torch.__version__)
    for members_file in sorted(Path(repository).glob("*/1/members.json")):
        version_dir = members_file.parent
        document = json.loads(members_file.read_text())
        changed = False
        for ident, entry in document["members"].items():
            fmt = entry.get("format", "torchscript")
            previous = entry.get("artifacts", {}).get("inf2")
            if (previous and previous.get("source_sha256") == entry["sha256"]
                    and previous.get("static_batch") == static_batch and (version_dir / previous["path"]).exists()):
                report.skipped.append(ident)
                continue
            model = ModelEntry(id=ident, architecture=document.get("architecture", "custom"), file=entry["file"],
                               format=fmt,
                               sha256=entry["sha256"], bytes=entry["bytes"], parameters=0,
                               inputs=[TensorSpec(**i) for i in entry["inputs"]],
                               outputs=[TensorSpec(**o) for o in entry["outputs"]])
            try:
                architecture = document.get("architectures", {}).get(entry.get("architecture", ""))
                module = load_member(version_dir / entry["file"], fmt, architecture, version_dir)
            except Exception as error:  # noqa: BLE001 - any load failure is this member's, reported, not fatal
                report.failed[ident] = (f"torch {torch.__version__} here cannot load its {fmt} artifact "
                                        f"({_first_line(error)}); re-export it with this torch, or a torch no newer "
                                        "than needed, and register it again")
            else:
                try:
                    traced = trace(module, example_tensors(model, static_batch))
                    relative = f"members/{ident}.inf2.pt"
                    torch.jit.save(traced, str(version_dir / relative))
                except Exception as error:  # noqa: BLE001
                    report.failed[ident] = f"tracing for Neuron failed: {_first_line(error)}"
                else:
                    data = (version_dir / relative).read_bytes()
                    entry.setdefault("artifacts", {})["inf2"] = {
                        "path": relative, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                        "static_batch": static_batch, "source_sha256": entry["sha256"],
                        "torch": torch.__version__}
                    report.compiled.append(ident)
                    changed = True
            if ident in report.failed and entry.get("artifacts", {}).pop("inf2", None) is not None:
                changed = True  # never leave a stale compiled artifact beside a source it was not made from
            if on_progress:
                on_progress(1)
        if changed:
            tmp = members_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
            tmp.replace(members_file)
    return report
