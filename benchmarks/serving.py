"""The served side of a data-plane benchmark: generated models and repositories (packs or dedicated
models), request targets, real tritonservers, and their memory, CPU and metric totals."""
from __future__ import annotations

import concurrent.futures
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from benchmarks.common import BenchmarkError, _median, _progress
from fleet.triton_server import TritonServer
from model_repository.contract import MEMBER_REQUESTS, TRITON_SUCCESS, samples
from model_repository.generator import example_inputs, generate
from model_repository.manifest import Manifest
from model_repository.packing import PackPlan, build_repository
from model_repository.triton_config import PackSettings


def ensure_models(work: Path, count: int, seed: int, progress: bool) -> Path:
    """Generated models in work/models-seedN, reused across runs when already there."""
    directory = work / f"models-seed{seed}"
    try:
        manifest = Manifest.read(directory)
        if manifest.seed == seed and len(manifest.models) >= count and all(
                (directory / m.file).exists() for m in manifest.models[:count]):
            return directory
    except (OSError, ValueError):
        pass
    shutil.rmtree(directory, ignore_errors=True)
    with _progress(count, "generate models", progress, "model") as bar:
        generate(count, directory, seed=seed, on_progress=bar.update)
    return directory


def subset(models_dir: Path, count: int, dest: Path) -> Path:
    """A manifest folder with the first `count` models, sharing the artifacts (through a symlink)."""
    manifest = Manifest.read(models_dir)
    if len(manifest.models) < count:
        raise BenchmarkError(f"need {count} models, {models_dir} has {len(manifest.models)}")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    (dest / "models").symlink_to((models_dir / "models").resolve(), target_is_directory=True)
    Manifest(seed=manifest.seed, models=manifest.models[:count]).write(dest)
    return dest


def build(models_dir: Path, repo: Path, pack_size: int, dedicated: bool = False,
          settings: PackSettings | None = None) -> list[PackPlan]:
    shutil.rmtree(repo, ignore_errors=True)
    return build_repository(models_dir, repo, pack_size=pack_size, dedicated=dedicated,
                            settings=settings or PackSettings())


@dataclass(frozen=True)


class Target:
    """One user model as a client addresses it."""

    model: str  # the Triton model: a pack, or the model itself when dedicated
    member: str | None  # the request parameter model_id (None for a dedicated model)
    array: np.ndarray
    dtype: str


def targets_for(plans: Sequence[PackPlan], models_dir: Path, seed: int) -> list[Target]:
    by_id = Manifest.read(models_dir).by_id()
    targets = []
    for plan in plans:
        for member in plan.members:
            entry = by_id[member.id]
            (array,) = example_inputs(entry, batch=1, seed=seed + len(targets))
            targets.append(Target(plan.name, None if plan.dedicated else member.id, array,
                                  entry.inputs[0].dtype))
    return targets


def make_server(repo: Path, logs: Path, label: str) -> TritonServer:
    """A server for `repo` (not started: `with` starts it and stops it and all its stubs)."""
    logs.mkdir(parents=True, exist_ok=True)
    return TritonServer(repo, log_path=logs / f"{label}-{time.strftime('%H%M%S')}.log")


def _tree_sample(pid: int, read: Callable[[psutil.Process], object]) -> list:
    """`read(process)` for a process and each live descendant (tritonserver and its stubs); processes that
    vanish or cannot be read while sampled are skipped."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    samples = []
    for process in processes:
        try:
            samples.append(read(process))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return samples


def tree_memory(pid: int) -> dict[str, float]:
    """PSS, USS and RSS summed over a process and all its descendants (tritonserver and its stubs)."""
    infos = _tree_sample(pid, psutil.Process.memory_full_info)
    return {"pss": float(sum(i.pss for i in infos)), "uss": float(sum(i.uss for i in infos)),
            "rss": float(sum(i.rss for i in infos)), "processes": len(infos)}


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process and its live descendants."""
    return float(sum(t.user + t.system for t in _tree_sample(pid, psutil.Process.cpu_times)))


def sample_memory(server: TritonServer, samples: int = 3, settle_s: float = 1.0,
                  interval_s: float = 0.5) -> dict[str, float]:
    """Median of a few samples after a short settle (the stubs free load-time garbage lazily)."""
    time.sleep(settle_s)
    taken = []
    for k in range(samples):
        if k:
            time.sleep(interval_s)
        taken.append(tree_memory(server.process.pid))
    return {key: _median(t[key] for t in taken) for key in taken[0]}


def load_models(server: TritonServer, names: Sequence[str], workers: int, desc: str, progress: bool) -> float:
    """Load Triton models with `workers` parallel requests; returns seconds."""
    started = time.perf_counter()
    with _progress(len(names), desc, progress, "model") as bar, \
            concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        for future in concurrent.futures.as_completed([pool.submit(server.load, n) for n in names]):
            future.result()
            bar.update(1)
    return time.perf_counter() - started


TRITON_COUNTERS = (
    TRITON_SUCCESS, "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us", MEMBER_REQUESTS,
    "fleet_member_compute_duration_us_total", "fleet_member_loads_total", "fleet_member_evictions_total",
)


def metric_totals(text: str) -> dict[str, float]:
    """Sum each counter of TRITON_COUNTERS over all its label sets (all models, all members)."""
    totals = dict.fromkeys(TRITON_COUNTERS, 0.0)
    for sample in samples(text):
        if sample.name in totals:
            totals[sample.name] += sample.value
    return totals


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}
