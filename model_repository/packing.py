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

from fleet.resources import project_path
from model_repository.formats import SUFFIX
from model_repository.manifest import Manifest, ModelEntry
from model_repository.triton_config import (
    FAMILIES,
    PackSettings,
    dedicated_config,
    pack_config,
    pack_inputs_for,
    pack_outputs_for,
)

# Copied into every pack as its model.py; fleet/resources.py finds it in a checkout or a wheel install.
PACK_RUNTIME = project_path("triton/backends/pack/model.py")
MEMBERS_FILE = "members.json"
VERSION = "1"


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


def write_triton_model(plan: PackPlan, source_dir: Path, repository: Path, settings: PackSettings) -> Path:
    """Write one Triton model directory (config per family, runtime, members) under `repository`."""
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
        for entry in plan.members:
            _place_file(Path(source_dir) / entry.file, version_dir / member_file(entry))
        document = members_document(plan, member_file)
        first = plan.members[0]
        inputs, outputs = pack_inputs_for(first), pack_outputs_for(first)
        configs = {f: pack_config(plan.name, inputs, outputs, f, settings) for f in FAMILIES}
    shutil.copyfile(PACK_RUNTIME, version_dir / "model.py")
    (version_dir / MEMBERS_FILE).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    (model_dir / "config.pbtxt").write_text(configs["cpu"])
    for family in ("gpu", "inf2"):
        (model_dir / "configs" / f"{family}.pbtxt").write_text(configs[family])
    return model_dir


def build_repository(manifest_dir: Path, repository: Path, pack_size: int = 100, dedicated: bool = False,
                     settings: PackSettings | None = None,
                     on_progress: Callable[[int], None] | None = None) -> list[PackPlan]:
    """Lay out a whole repository from a manifest directory; returns the plans written."""
    manifest = Manifest.read(manifest_dir)
    plans = plan_dedicated(manifest.models) if dedicated else plan_packs(manifest.models, pack_size)
    Path(repository).mkdir(parents=True, exist_ok=True)
    for plan in plans:
        write_triton_model(plan, Path(manifest_dir), Path(repository), settings or PackSettings())
        if on_progress:
            on_progress(len(plan.members))
    return plans
