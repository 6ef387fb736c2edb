"""S3 is the source of truth for the model repository; servers keep a local copy in step with it.

Why not point Triton at `s3://` directly: Triton downloads a model file by file on every load, with no
cache, so thousands of members would be fetched again at each reload. Instead:

* `upload` writes changed files, then an index (`.fleet/index.json`: path -> sha256, size) last, so a
  reader never sees an index that names files not yet written;
* `sync` diffs that index against the local files, streams only what changed into a staging folder
  (bounded memory: objects go to disk chunk by chunk while they are hashed), verifies every object's
  sha256 and moves complete Triton models into place atomically. An object that fails verification is
  refused and its model keeps its last good version. A file's sha256 is computed once, at download: a
  verified index next to the repository (keyed by size and mtime) spares later syncs from re-hashing;
* with `server=NAME` a server holds only its share: the packs of its assignment
  (`.fleet/assignments/NAME.json`, published by the control plane), within a disk budget. When the
  assigned packs exceed the budget, the most recently assigned or used ones are kept (LRU) and the rest
  are reported as over budget. Each sync writes its status as JSON and as Prometheus text next to the
  repository (see `status_paths`), so an operator, the control plane or a node exporter can read it.
  With `publish_status=True` (what `fleet sync --server` does) the same JSON document is also written to
  S3 next to the assignment (`.fleet/status/NAME.json`): on EKS and ECS the files next to the repository
  sit in the pod's or task's volume, where the control plane cannot read them.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

from model_repository.contract import parse_metrics
from model_repository.local_copy import (  # noqa: F401
    DISK_RESERVE_FRACTION,
    LAST_FILES,
    _apply_model,
    _load_state,
    _model_of,
    _staging_dir,
    _state_path,
    _write_json,
    default_disk_budget,
    file_sha256,
    local_index,
    status_paths,
    verified_index_path,
    verified_local_index,
)
from model_repository.s3_store import (  # noqa: F401
    ASSIGNMENTS_PREFIX,
    INDEX_KEY,
    STATUS_PREFIX,
    STREAM_CHUNK_BYTES,
    TRANSFER_ERRORS,
    IntegrityError,
    NoAssignment,
    S3Location,
    SyncError,
    _download_verified,
    _explain,
    assignment_key,
    publish_sync_status,
    read_assignment,
    read_remote_index,
    s3_client,
    status_key,
    upload,
)
from model_repository.triton_admin import scrape

# The repository's S3 side (s3_store.py) and a server's local copy (local_copy.py) live in their own modules;
# their names, imported above, stay importable from here, where every caller found them.
log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    downloaded: list[str] = field(default_factory=list)
    bytes: int = 0
    changed_models: set[str] = field(default_factory=set)
    removed_models: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)  # path -> reason
    server: str | None = None
    assigned_packs: list[str] = field(default_factory=list)  # in LRU order, most recent first
    missing_packs: list[str] = field(default_factory=list)  # assigned but not in the repository index
    over_budget_packs: list[str] = field(default_factory=list)  # assigned but left out for the budget
    evicted_packs: list[str] = field(default_factory=list)  # removed from disk to stay within the budget
    budget_bytes: int | None = None
    resident_bytes: int = 0
    resident_packs: int = 0
    hits: int = 0  # packs wanted and already complete on disk
    misses: int = 0  # packs wanted that needed downloads
    fill_seconds: float = 0.0
    status: dict | None = None  # the status document this sync wrote (`<repo>.sync-status.json`)
    status_published: bool = False  # it was also written to S3 (`status_key`)

    @property
    def ok(self) -> bool:
        return not self.refused


class UsageTracker:
    """Which packs got requests since the last poll, read from Triton's Prometheus metrics.

    Why: the disk tier's LRU should keep what is used, not only what was assigned last. Without a URL (or
    when Triton does not answer) it reports nothing and the order is by assignment time alone.

    A pack counts its members' requests, not Triton's successes (model_repository.contract's
    `ServerMetrics.requests_per_model` says why); models without the pack runtime (e.g. adfilter) use
    Triton's counter.
    """

    def __init__(self, metrics_url: str | None) -> None:
        self.metrics_url, self.counts = metrics_url, {}

    @staticmethod
    def request_counts(text: str) -> dict[str, float]:
        """model -> requests so far: member requests for packs, Triton's successes for other models."""
        return parse_metrics(text).requests_per_model()

    def poll(self) -> dict[str, float]:
        if not self.metrics_url:
            return {}
        try:
            counts = scrape(self.metrics_url, timeout_s=2).requests_per_model()
        except requests.RequestException as error:
            log.info("no request counts from %s (%s); LRU order by assignment only", self.metrics_url, error)
            return {}
        now, used = time.time(), {}
        for model, count in counts.items():
            if count > self.counts.get(model, 0.0):
                used[model] = now
            self.counts[model] = count
        return used


def _pack_bytes(remote: dict[str, dict]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for relative, meta in remote.items():
        sizes[_model_of(relative)] = sizes.get(_model_of(relative), 0) + int(meta.get("size", 0))
    return sizes


def _choose_within_budget(assigned: list[str], sizes: dict[str, int], budget: int) -> tuple[list[str], list[str]]:
    """Keep packs in LRU order (most recent first) while they fit; a pack too big is skipped, not a stop,
    so a smaller, older pack can still use the room."""
    kept, left_out, used = [], [], 0
    for pack in assigned:
        if used + sizes.get(pack, 0) <= budget:
            kept.append(pack)
            used += sizes.get(pack, 0)
        else:
            left_out.append(pack)
    return kept, left_out


def sync(uri: str, repository: Path, client=None, on_progress: Callable[[int], None] | None = None, *,
         server: str | None = None, disk_budget_bytes: int | None = None,
         used_at: Mapping[str, float] | None = None, publish_status: bool = False) -> SyncReport:
    """Bring `repository` in step with the S3 prefix; see the module docstring for the guarantees.

    Without `server` the whole repository is synced (small setups). With it, only that server's
    assignment, within `disk_budget_bytes` (default: free disk less a reserve). `used_at` (pack -> unix
    time of its last request, e.g. from Triton's metrics) refines the LRU order. With `publish_status`
    and `server`, the status document is also written to S3 (`status_key`; a failure is only logged).
    """
    client = client or s3_client()
    location = S3Location.parse(uri)
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    remote = read_remote_index(client, location)
    if remote is None:
        raise SyncError(f"no repository index at {location}/{INDEX_KEY}: run `fleet upload` first")
    report = SyncReport(server=server)
    local = verified_local_index(repository)
    state = _load_state(repository)
    if server is not None:
        assignment = read_assignment(client, location, server)
        if assignment is None:
            raise NoAssignment(f"no assignment for server '{server}' at {location}/{assignment_key(server)}: the "
                            "control plane publishes it once the server is registered and packs are placed on "
                            "it; nothing was changed locally")
        remote = _select_share(report, state, repository, assignment, remote, local, disk_budget_bytes,
                               used_at or {})
    present_before = {_model_of(p) for p in local}
    wanted = [p for p, meta in remote.items() if local.get(p, {}).get("sha256") != meta["sha256"]]
    staging = _staging_dir(repository) / uuid.uuid4().hex
    staging.mkdir(parents=True)
    verified: dict[str, str] = {}

    def fetch(relative: str) -> tuple[str, str | None, int]:
        try:
            size = _download_verified(client, location, relative, remote[relative]["sha256"],
                                      staging / relative)
            verified[relative] = remote[relative]["sha256"]
            if on_progress:
                on_progress(size)
            return relative, None, size
        except (IntegrityError, *TRANSFER_ERRORS, OSError) as error:
            return relative, str(error), 0

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(fetch, wanted))
        report.fill_seconds = round(time.monotonic() - started, 3) if wanted else 0.0
        for relative, problem, size in results:
            if problem:
                report.refused[relative] = problem
            else:
                report.downloaded.append(relative)
                report.bytes += size
        bad_models = {_model_of(p) for p in report.refused}
        for model in sorted({_model_of(p) for p in report.downloaded} - bad_models):
            _apply_model(repository, staging, model, remote)
            report.changed_models.add(model)
        for model in sorted(bad_models):
            log.error("model %s keeps its last good version: %s", model,
                      "; ".join(f"{p}: {r}" for p, r in report.refused.items() if _model_of(p) == model))
        report.removed_models = _remove_vanished(repository, local, remote, bad_models, report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _record_verified(repository, local, remote, verified, report)
    wanted_models = {_model_of(p) for p in wanted}
    report.misses = len(wanted_models)
    report.hits = len({_model_of(p) for p in remote} - wanted_models)
    if server is not None:
        report.evicted_packs = sorted(report.removed_models & set(report.over_budget_packs) & present_before)
    report.status = _write_status(repository, report, state)
    if publish_status and server is not None:
        report.status_published = publish_sync_status(client, location, server, report.status)
    return report


def _select_share(report: SyncReport, state: dict, repository: Path, assignment: dict, remote: dict[str, dict],
                  local: dict[str, dict], budget: int | None, used_at: Mapping[str, float]) -> dict[str, dict]:
    """The part of the index this server holds: its assigned packs, LRU-ordered, within the budget."""
    now = time.time()
    packs = state["packs"]
    assigned = [str(p) for p in assignment["packs"]]
    for pack in assigned:
        record = packs.setdefault(pack, {"assigned_at": now, "used_at": now})
        record["used_at"] = max(record["used_at"], float(used_at.get(pack, 0)))
    for pack in set(packs) - set(assigned):
        del packs[pack]  # unassigned: forgotten, so a later assignment counts as new
    sizes = _pack_bytes(remote)
    report.missing_packs = sorted(p for p in assigned if p not in sizes)
    if report.missing_packs:
        log.warning("assigned packs not in the repository index yet (the control plane may still be "
                    "building them): %s", report.missing_packs)
    order = sorted((p for p in assigned if p in sizes), key=lambda p: (-packs[p]["used_at"], p))
    report.assigned_packs = order
    resident = sum(meta["size"] for p, meta in local.items() if _model_of(p) in sizes)
    report.budget_bytes = budget if budget is not None else default_disk_budget(repository, resident)
    kept, report.over_budget_packs = _choose_within_budget(order, sizes, report.budget_bytes)
    if report.over_budget_packs:
        log.warning("server %s: the assigned packs need %d B but the disk budget is %d B; keeping the %d most "
                    "recently assigned or used, leaving out %s (raise --disk-budget-bytes or place fewer packs "
                    "on this server)", report.server, sum(sizes[p] for p in order), report.budget_bytes,
                    len(kept), report.over_budget_packs)
    keep = set(kept)
    return {p: meta for p, meta in remote.items() if _model_of(p) in keep}


def _write_status(repository: Path, report: SyncReport, state: dict) -> dict:
    counters = state["counters"]
    counters["hits"] += report.hits
    counters["misses"] += report.misses
    counters["evictions"] += len(report.evicted_packs)
    counters["fill_seconds"] = round(counters["fill_seconds"] + report.fill_seconds, 3)
    _write_json(_state_path(repository), state)
    json_path, prom_path = status_paths(repository)
    document = {
        "server": report.server, "updated_at": time.time(), "budget_bytes": report.budget_bytes,
        "resident_bytes": report.resident_bytes, "resident_packs": report.resident_packs,
        "assigned_packs": report.assigned_packs, "missing_packs": report.missing_packs,
        "over_budget_packs": report.over_budget_packs, "evicted_packs": report.evicted_packs,
        "last_sync": {"downloaded_files": len(report.downloaded), "downloaded_bytes": report.bytes,
                      "hits": report.hits, "misses": report.misses, "fill_seconds": report.fill_seconds,
                      "refused": report.refused},
        "totals": dict(counters)}
    _write_json(json_path, document)
    labels = f'{{server="{report.server or ""}"}}'
    metrics = [
        ("fleet_sync_resident_bytes", "gauge", "bytes of packs on this server's disk", report.resident_bytes),
        ("fleet_sync_resident_packs", "gauge", "packs on this server's disk", report.resident_packs),
        ("fleet_sync_budget_bytes", "gauge", "disk budget of the repository (-1: whole repository synced)",
         report.budget_bytes if report.budget_bytes is not None else -1),
        ("fleet_sync_assigned_packs", "gauge", "packs assigned to this server", len(report.assigned_packs)),
        ("fleet_sync_over_budget_packs", "gauge", "assigned packs left out to stay within the disk budget",
         len(report.over_budget_packs)),
        ("fleet_sync_hits_total", "counter", "packs a sync found complete on disk", counters["hits"]),
        ("fleet_sync_misses_total", "counter", "packs a sync had to download", counters["misses"]),
        ("fleet_sync_evictions_total", "counter", "packs removed to stay within the disk budget",
         counters["evictions"]),
        ("fleet_sync_fill_seconds_total", "counter", "seconds spent downloading", counters["fill_seconds"]),
        ("fleet_sync_last_success_timestamp_seconds", "gauge", "when the last sync finished", time.time()),
    ]
    lines = []
    for name, kind, help_text, value in metrics:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{labels} {value}"]
    tmp = prom_path.with_name(f"{prom_path.name}.tmp")
    try:
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, prom_path)
    except OSError as error:
        log.warning("cannot write %s (%s); continuing without it", prom_path, error)
    return document


def _record_verified(repository: Path, local: dict, remote: dict, verified: dict[str, str],
                     report: SyncReport) -> None:
    """Remember the hashes computed at download, keyed by size and mtime, for the next sync."""
    index = {}
    for relative in set(local) | set(verified):
        path = repository / relative
        try:
            stat = path.stat()
        except OSError:
            continue
        sha = verified.get(relative) or local[relative]["sha256"]
        index[relative] = {"sha256": sha, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    _write_json(verified_index_path(repository), index)
    report.resident_bytes = sum(meta["size"] for meta in index.values())
    report.resident_packs = len({_model_of(p) for p in index})


def _remove_vanished(repository: Path, local: dict, remote: dict, keep: set[str],
                     report: SyncReport) -> set[str]:
    removed_models = set()
    remote_models = {_model_of(p) for p in remote}
    for relative in sorted(set(local) - set(remote)):
        model = _model_of(relative)
        if model in keep:
            continue
        if model not in remote_models:
            shutil.rmtree(repository / model, ignore_errors=True)
            removed_models.add(model)
        else:
            (repository / relative).unlink(missing_ok=True)
            report.changed_models.add(model)
    return removed_models
