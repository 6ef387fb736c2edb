"""Lays out a Triton model repository from a generated (or registered) set of user models.

Two layouts: **packs** (many members of one architecture in one Python-backend model, the default) and
**dedicated** (one Triton model per user model, for models too big to share a process). Each Triton model
directory carries a config for every compute family and a members.json the pack runtime reads.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from model_repository.formats import SUFFIX
from model_repository.manifest import Manifest, ModelEntry
from model_repository.resources import project_path
from model_repository.triton_config import (
    FAMILIES,
    PackSettings,
    dedicated_config,
    pack_config,
    pack_inputs_for,
    pack_outputs_for,
)

# Copied into every pack as its model.py; model_repository/resources.py finds it in a checkout or a wheel install.
PACK_RUNTIME = project_path("triton/backends/pack/model.py")
# The pack runtime is model.py and its sibling modules; the stub puts the version folder on sys.path, so
# model.py imports them by name (verified with tritonserver 2.51). Every pack carries all of them.
RUNTIME_FILES = ("model.py", "pack_weights.py", "pack_programs.py", "pack_stacked.py")
MEMBERS_FILE = "members.json"
VERSION = "1"


def runtime_files() -> dict[str, bytes]:
    """The pack runtime's files by name, as every pack's version folder holds them."""
    return {name: (PACK_RUNTIME.parent / name).read_bytes() for name in RUNTIME_FILES}


def install_runtime(version_dir: Path) -> None:
    """Copy the pack runtime (model.py and its modules) into a pack's version folder."""
    for name, body in runtime_files().items():
        (Path(version_dir) / name).write_bytes(body)


def family_member_file(member: str) -> str:
    """Where a split member's weights lie inside a pack's version folder."""
    return f"members/{member}.safetensors"


def program_file(architecture: str, fmt: str) -> str:
    """Where an architecture's program lies inside a pack's version folder (once per pack)."""
    return f"programs/{architecture}{SUFFIX[fmt]}"


def add_families(document: dict, members: dict[str, dict], architectures: dict[str, dict]) -> dict:
    """Turn members of `document` into family members: each travels as its weights file (its entry's
    file, sha256 and bytes are the weights file's) and names its architecture, whose program and tensor
    table `document["architectures"]` holds once (see docs/data-plane.md, members.json)."""
    for member, facts in members.items():
        entry = document["members"][member]
        entry.update(file=family_member_file(member), sha256=facts["sha256"], bytes=facts["bytes"],
                     architecture=facts["architecture"], format=architectures[facts["architecture"]]["format"])
    document["architectures"] = architectures
    return document


@dataclass(frozen=True)
class PackPlan:
    """Which members go into which Triton model."""

    name: str
    architecture: str
    members: tuple[ModelEntry, ...]
    dedicated: bool = False


def plan_packs(models: Iterable[ModelEntry], pack_size: int, prefix: str = "") -> list[PackPlan]:
    """Group members by architecture, in id order, into packs of at most `pack_size`."""
    if pack_size < 1:
        raise ValueError("pack size must be at least 1")
    by_arch: dict[str, list[ModelEntry]] = defaultdict(list)
    for entry in sorted(models, key=lambda m: m.id):
        by_arch[entry.architecture].append(entry)
    plans = []
    for arch in sorted(by_arch):
        entries = by_arch[arch]
        for k in range(0, len(entries), pack_size):
            plans.append(PackPlan(f"{prefix}{arch}-pack-{k // pack_size:04d}", arch,
                                  tuple(entries[k:k + pack_size])))
    return plans


def plan_dedicated(models: Iterable[ModelEntry]) -> list[PackPlan]:
    return [PackPlan(m.id, m.architecture, (m,), dedicated=True) for m in sorted(models, key=lambda m: m.id)]


def _place_file(source: Path, target: Path) -> None:
    """Hard-link when possible (generated repositories share artifacts), else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def member_file(entry: ModelEntry) -> str:
    """Where a member's artifact lies inside a pack's version folder; the suffix tells its format."""
    return f"members/{entry.id}{SUFFIX[entry.format]}"


def members_document(plan: PackPlan, file_of: Callable[[ModelEntry], str]) -> dict:
    return {
        "pack": plan.name,
        "architecture": plan.architecture,
        "members": {
            m.id: {"file": file_of(m), "format": m.format, "sha256": m.sha256, "bytes": m.bytes,
                   "inputs": [i.model_dump(mode="json") for i in m.inputs],
                   "outputs": [o.model_dump(mode="json") for o in m.outputs]}
            for m in plan.members
        },
    }


def split_members(manifest_dir: Path, entries: Iterable[ModelEntry]) -> dict[str, object]:
    """Each generated member split into its architecture's program and its weights (in this process: the
    generator's models are trusted), cached under `manifest_dir/.splits/<sha256>`; member id -> LocalSplit."""
    import torch

    from model_repository.families import split_file
    from model_repository.generator import example_inputs

    splits = {}
    for entry in entries:
        inputs = [torch.from_numpy(a) for a in example_inputs(entry, batch=2)]
        splits[entry.id] = split_file(Path(manifest_dir) / entry.file, entry.format, inputs,
                                      Path(manifest_dir) / ".splits" / entry.sha256)
    return splits


def write_triton_model(plan: PackPlan, source_dir: Path, repository: Path, settings: PackSettings,
                       splits: dict[str, object] | None = None) -> Path:
    """Write one Triton model directory (config per family, runtime, members) under `repository`.

    With `splits` (model_repository.families.LocalSplit per member id), a pack's split members travel as
    their weights files and one program per architecture (the family layout); the others whole."""
    model_dir = Path(repository) / plan.name
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "configs").mkdir(exist_ok=True)
    if plan.dedicated:
        entry = plan.members[0]
        artifact = "model" + SUFFIX[entry.format]
        _place_file(Path(source_dir) / entry.file, version_dir / artifact)
        document = members_document(plan, lambda m: artifact)
        configs = {f: dedicated_config(plan.name, entry, f, settings) for f in FAMILIES}
    else:
        split = {m.id: splits[m.id] for m in plan.members if splits and m.id in splits and splits[m.id].split.ok}
        for entry in plan.members:
            if entry.id in split:
                _place_file(split[entry.id].weights, version_dir / family_member_file(entry.id))
            else:
                _place_file(Path(source_dir) / entry.file, version_dir / member_file(entry))
        document = members_document(plan, member_file)
        architectures = {}
        for done in split.values():
            if done.architecture not in architectures:
                relative = program_file(done.architecture, done.split_format)
                _place_file(done.program, version_dir / relative)
                architectures[done.architecture] = {
                    "format": done.split_format, "tensors": done.split.spec,
                    "program": {"path": relative, "sha256": done.program_sha256,
                                "bytes": done.program.stat().st_size}}
        if split:
            add_families(document, {ident: {"architecture": done.architecture, "sha256": done.weights_sha256,
                                            "bytes": done.weights_bytes} for ident, done in split.items()},
                         architectures)
        first = plan.members[0]
        inputs, outputs = pack_inputs_for(first), pack_outputs_for(first)
        configs = {f: pack_config(plan.name, inputs, outputs, f, settings) for f in FAMILIES}
    install_runtime(version_dir)
    (version_dir / MEMBERS_FILE).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    (model_dir / "config.pbtxt").write_text(configs["cpu"])
    for family in ("gpu", "inf2"):
        (model_dir / "configs" / f"{family}.pbtxt").write_text(configs[family])
    return model_dir


def build_repository(manifest_dir: Path, repository: Path, pack_size: int = 100, dedicated: bool = False,
                     settings: PackSettings | None = None,
                     on_progress: Callable[[int], None] | None = None, families: bool = False) -> list[PackPlan]:
    """Lay out a whole repository from a manifest directory; returns the plans written. With `families`,
    members are split into programs and weights (split_members) and packs use the family layout."""
    manifest = Manifest.read(manifest_dir)
    plans = plan_dedicated(manifest.models) if dedicated else plan_packs(manifest.models, pack_size)
    splits = split_members(manifest_dir, manifest.models) if families and not dedicated else None
    Path(repository).mkdir(parents=True, exist_ok=True)
    for plan in plans:
        write_triton_model(plan, Path(manifest_dir), Path(repository), settings or PackSettings(), splits)
        if on_progress:
            on_progress(len(plan.members))
    return plans
