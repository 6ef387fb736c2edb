"""A server's local copy of the repository: what is on disk (an index of sizes and sha256, hashed once and
remembered by size and mtime), the sync's own state and status files next to it, and the atomic moves that
put a verified model in place or take a vanished one away (model_repository/s3_sync.py)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)


DISK_RESERVE_FRACTION = 0.05  # the default budget leaves this share of the filesystem free
# Written last inside a model, so the pack runtime never reads a members.json naming missing files.
LAST_FILES = ("members.json", "config.pbtxt")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def local_index(repository: Path) -> dict[str, dict]:
    """path (posix, relative) -> {sha256, size} for every file under a repository."""
    repository = Path(repository)
    index = {}
    for path in sorted(repository.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            index[path.relative_to(repository).as_posix()] = {"sha256": file_sha256(path),
                                                              "size": path.stat().st_size}
    return index


def verified_index_path(repository: Path) -> Path:
    return Path(repository).parent / f".{Path(repository).name}.verified.json"


def verified_local_index(repository: Path) -> dict[str, dict]:
    """Like `local_index`, but hashes only files whose size or mtime changed since they were verified.

    Why: a sidecar syncs every 30 s; re-hashing gigabytes each time would cost more than the downloads.
    """
    repository = Path(repository)
    try:
        known = json.loads(verified_index_path(repository).read_text())
    except (OSError, ValueError):
        known = {}
    index = {}
    for path in sorted(repository.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        relative, stat = path.relative_to(repository).as_posix(), path.stat()
        record = known.get(relative)
        if record and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
            index[relative] = record
        else:
            index[relative] = {"sha256": file_sha256(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    _write_json(verified_index_path(repository), index)
    return index


def _write_json(path: Path, document: object) -> None:
    """Best effort: the sync's own bookkeeping must never fail a sync (a read-only sibling folder costs
    re-hashing and status, not models)."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        tmp.write_text(json.dumps(document, sort_keys=True, indent=1))
        os.replace(tmp, path)
    except OSError as error:
        log.warning("cannot write %s (%s); continuing without it", path, error)


def _model_of(relative: str) -> str:
    return PurePosixPath(relative).parts[0]


def _staging_dir(repository: Path) -> Path:
    # A sibling, so renames stay on one filesystem and Triton never lists it as a model.
    return repository.parent / f".{repository.name}.staging"


def status_paths(repository: Path) -> tuple[Path, Path]:
    """Where a sync reports: `<repo>.sync-status.json` and `<repo>.sync.prom` (Prometheus text format,
    readable by node_exporter's textfile collector or any scraper that reads a file)."""
    repository = Path(repository)
    return (repository.parent / f"{repository.name}.sync-status.json",
            repository.parent / f"{repository.name}.sync.prom")


def _state_path(repository: Path) -> Path:
    return Path(repository).parent / f".{Path(repository).name}.sync-state.json"


def default_disk_budget(repository: Path, resident_bytes: int) -> int:
    """What the repository may hold: what it holds now plus the free space, less a reserve."""
    usage = shutil.disk_usage(Path(repository))
    return max(0, resident_bytes + usage.free - int(usage.total * DISK_RESERVE_FRACTION))


def _load_state(repository: Path) -> dict:
    try:
        state = json.loads(_state_path(repository).read_text())
    except (OSError, ValueError):
        state = {}
    state.setdefault("packs", {})
    state.setdefault("counters", {"hits": 0, "misses": 0, "evictions": 0, "fill_seconds": 0.0})
    return state


def _apply_model(repository: Path, staging: Path, model: str, remote: dict[str, dict]) -> None:
    """Move one model's staged files into the live repository without exposing a half-written model."""
    live, staged = repository / model, staging / model
    if not live.exists():
        os.rename(staged, live)  # a whole new model appears at once
        return
    files = sorted((p for p in staged.rglob("*") if p.is_file()),
                   key=lambda p: (p.name in LAST_FILES, p.as_posix()))
    for path in files:
        target = live / path.relative_to(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
