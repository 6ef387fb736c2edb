"""Builds packs from the registry straight into S3: the control plane keeps no copy of the repository.

Why: at real size (thousands of 40-450 MB models) a local copy of every artifact would need terabytes on
the control plane, and every replica of it would hold its own. A pack is a handful of small files written
from memory (config per family, the pack runtime, members.json) plus its members, which S3 copies
server-side from the content-addressed `PREFIX/.fleet/artifacts/...` objects the registry stored (a managed copy, so
objects over 5 GB are copied in parts). No artifact byte passes through this process.

Safe with several writers: the repository index (`.fleet/index.json`) is merged per pack with a
conditional write (If-Match on the ETag read, If-None-Match when there was none) and retried on
conflict, so one control-plane replica never erases the entries another wrote; a pack's stale keys are
deleted only for the pack being built and only after the index that no longer names them is written.
"""
from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select
from sqlalchemy.orm import Session
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from control_plane.db import Architecture, Model, ModelVersion, Pack
from control_plane.registry import Registry, entry_for
from model_repository.formats import SUFFIX
from model_repository.packing import (
    MEMBERS_FILE,
    VERSION,
    PackPlan,
    add_families,
    family_member_file,
    members_document,
    program_file,
    runtime_files,
)
from model_repository.s3_sync import INDEX_KEY, S3Location
from model_repository.triton_config import FAMILIES, PackSettings, pack_config, pack_inputs_for, pack_outputs_for

log = logging.getLogger(__name__)


class IndexConflict(RuntimeError):
    """Another writer changed the index between our read and our write; the merge is retried."""


class RepositoryBuildError(RuntimeError):
    """S3 refused a write; the pack keeps its previous build and the reconciler tries again."""


def pack_files(plan: PackPlan, settings: PackSettings, file_of, generation: int,
               formats: dict[str, str], families: dict | None = None) -> dict[str, bytes]:
    """The small files of one pack, in memory: relative path -> content (the same layout as
    `model_repository.packing.write_triton_model` writes to disk). `families` adds the family layout
    (model_repository.packing.add_families): members that are weights files, and their architectures."""
    document = members_document(plan, file_of)
    document["generation"] = generation
    for member, fmt in formats.items():
        document["members"][member]["format"] = fmt
    if families:
        add_families(document, families["members"], families["architectures"])
    first = plan.members[0]
    configs = {f: pack_config(plan.name, pack_inputs_for(first), pack_outputs_for(first), f, settings)
               for f in FAMILIES}
    files = {
        "config.pbtxt": configs["cpu"].encode(),
        "configs/gpu.pbtxt": configs["gpu"].encode(),
        "configs/inf2.pbtxt": configs["inf2"].encode(),
        f"{VERSION}/{MEMBERS_FILE}": (json.dumps(document, indent=1, sort_keys=True) + "\n").encode(),
    }
    files.update({f"{VERSION}/{name}": body for name, body in runtime_files().items()})
    return files


class RepositoryBuilder:
    def __init__(self, registry: Registry, work_dir: Path | None = None, pack_settings: PackSettings | None = None):
        # work_dir is accepted for compatibility and unused: nothing is kept locally any more.
        self.registry = registry
        self.s3 = registry.s3
        self.location = S3Location.parse(registry.settings.repository_uri)
        self.pack_settings = pack_settings or PackSettings()
        self._written: list[str] = []

    # ---- index ---------------------------------------------------------------------------------
    def _read_index(self) -> tuple[dict[str, dict], str | None]:
        try:
            response = self.s3.get_object(Bucket=self.location.bucket, Key=self.location.key(INDEX_KEY))
        except ClientError as error:
            if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return {}, None
            raise
        return json.loads(response["Body"].read())["files"], response["ETag"]

    def ensure_index(self) -> bool:
        """Publish an empty index when the prefix has none; True if this call wrote it.

        Why: servers sync what the index names and wait, retrying, while there is none (`fleet sync`: "no
        repository index"). Without this a first deploy onto an empty prefix could never become Ready
        before the first model is registered. The write is conditional (If-None-Match), so it never
        replaces an index that `fleet upload` or another replica wrote, whatever the order."""
        try:
            self.s3.put_object(Bucket=self.location.bucket, Key=self.location.key(INDEX_KEY),
                               Body=json.dumps({"format": 1, "files": {}}, sort_keys=True).encode(),
                               ContentType="application/json", IfNoneMatch="*")
        except ClientError as error:
            if error.response["Error"]["Code"] in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        log.info("published an empty repository index at %s/%s (no model registered yet)", self.location,
                 INDEX_KEY)
        return True

    @retry(retry=retry_if_exception_type(IndexConflict), stop=stop_after_attempt(8),
           wait=wait_random_exponential(multiplier=0.05, max=1), reraise=True)
    def _merge_index(self, pack: str, entries: dict[str, dict],
                     first_read: list[tuple[dict[str, dict], str | None]] | None = None) -> dict[str, dict]:
        """Replace one pack's entries in the index; returns the entries it had before.

        `first_read` may hold the index as the caller just read it: the first attempt uses it (at 10,000
        models the index is ~2 MB, and reading and parsing it again cost as much as writing it); the
        conditional write still refuses it if another writer changed the index since, and every retry
        reads afresh."""
        files, etag = first_read.pop() if first_read else self._read_index()
        before = {p: m for p, m in files.items() if p.startswith(f"{pack}/")}
        merged = {p: m for p, m in files.items() if not p.startswith(f"{pack}/")}
        merged.update({f"{pack}/{relative}": meta for relative, meta in entries.items()})
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self.s3.put_object(Bucket=self.location.bucket, Key=self.location.key(INDEX_KEY),
                               Body=json.dumps({"format": 1, "files": merged}, sort_keys=True).encode(),
                               **condition)
        except ClientError as error:
            if error.response["Error"]["Code"] in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise IndexConflict(f"the index changed while pack {pack} was merged") from None
            raise
        return before

    # ---- build ---------------------------------------------------------------------------------
    def build(self, session: Session, pack: Pack, settings: PackSettings | None = None) -> int:
        """Write one pack as the registry declares it now; returns its member count (0 removes it).

        `settings` (default: the builder's) carries what differs per pack (e.g. generation, residency budget).
        """
        rows = session.execute(
            select(Model, ModelVersion)
            .join(ModelVersion, (ModelVersion.model == Model.name) & (ModelVersion.version == Model.current_version))
            .where(Model.pack == pack.name, Model.desired == "loaded").order_by(Model.name)).all()
        try:
            if not rows:
                self._publish_pack(pack.name, {}, {}, [])
                return 0
            settings = settings or self.pack_settings
            files, copies = {}, []
            formats = {model.name: (version.format or "torchscript") for model, version in rows}
            # Members that were split (and every member registered as weights alone) travel as their weights
            # file, their architectures' programs once each; the others, or all with families off, whole.
            split = {model.name: version for model, version in rows if version.architecture and version.weights_key
                     and (settings.families or not version.whole_artifact)}
            architectures = self._architectures(session, {v.architecture for v in split.values()})
            entries = [entry_for(model, version).model_copy(update={"file": (
                family_member_file(model.name) if model.name in split
                else f"members/{model.name}{SUFFIX[formats[model.name]]}")}) for model, version in rows]
            families = None
            if split:
                families = {"members": {name: {"architecture": v.architecture, "sha256": v.weights_sha256,
                                               "bytes": v.weights_bytes} for name, v in split.items()},
                            "architectures": {a.id: {"format": a.format, "tensors": a.tensors,
                                                     "program": {"path": program_file(a.id, a.format),
                                                                 "sha256": a.program_sha256,
                                                                 "bytes": a.program_bytes}}
                                              for a in architectures.values()}}
                for a in architectures.values():
                    relative = f"{VERSION}/{program_file(a.id, a.format)}"
                    files[relative] = {"sha256": a.program_sha256, "size": a.program_bytes}
                    copies.append((a.program_key, relative, a.program_sha256))
            small = pack_files(PackPlan(pack.name, "custom", tuple(entries)), settings,
                               lambda m: m.file, pack.generation, formats, families)
            for relative, body in small.items():
                files[relative] = {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
            for entry, (model, version) in zip(entries, rows, strict=True):
                if model.name in split:
                    files[f"{VERSION}/{entry.file}"] = {"sha256": version.weights_sha256, "size": version.weights_bytes}
                    copies.append((version.weights_key, f"{VERSION}/{entry.file}", version.weights_sha256))
                else:
                    files[f"{VERSION}/{entry.file}"] = {"sha256": version.sha256, "size": version.bytes}
                    copies.append((version.s3_key, f"{VERSION}/{entry.file}", version.sha256))
            self._publish_pack(pack.name, files, small, copies)
        except (ClientError, BotoCoreError) as error:
            raise RepositoryBuildError(f"cannot write pack {pack.name} to {self.location}: {error}") from None
        return len(entries)

    @staticmethod
    def _architectures(session: Session, ids: set[str]) -> dict[str, Architecture]:
        if not ids:
            return {}
        return {a.id: a for a in session.scalars(select(Architecture).where(Architecture.id.in_(sorted(ids))))}

    def _publish_pack(self, pack: str, files: dict[str, dict], small: dict[str, bytes],
                      copies: list[tuple[str, str, str]]) -> None:
        bucket = self.location.bucket
        current, etag = self._read_index()
        unchanged = {p for p, meta in files.items() if current.get(f"{pack}/{p}", {}).get("sha256") == meta["sha256"]}

        def copy(job: tuple[str, str, str]) -> None:
            source, relative, sha = job
            # A managed copy: one CopyObject below the multipart threshold, parts above (objects over 5 GB).
            self.s3.copy({"Bucket": bucket, "Key": source}, bucket, self.location.key(f"{pack}/{relative}"),
                         ExtraArgs={"Metadata": {"sha256": sha}, "MetadataDirective": "REPLACE"})

        # Members first, the files that name them (members.json, config.pbtxt) last, the index after all.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(copy, [job for job in copies if job[1] not in unchanged]))
        for relative in sorted(small, key=lambda r: (r.endswith((MEMBERS_FILE, "config.pbtxt")), r)):
            if relative not in unchanged:
                self.s3.put_object(Bucket=bucket, Key=self.location.key(f"{pack}/{relative}"), Body=small[relative],
                                   Metadata={"sha256": files[relative]["sha256"]})
        self._written += [f"{pack}/{p}" for p in files if p not in unchanged]
        before = self._merge_index(pack, files, first_read=[(current, etag)])
        for relative in sorted(set(before) - {f"{pack}/{p}" for p in files}):
            self.s3.delete_object(Bucket=bucket, Key=self.location.key(relative))

    def publish(self) -> list[str]:
        """Each build publishes itself (the index is merged per pack); returns what was written since the
        last call, for logs."""
        written, self._written = self._written, []
        return written
