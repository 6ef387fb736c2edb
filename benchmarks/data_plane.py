"""Data-plane benchmark: packs against one Triton model per user model, on the real tritonserver.

Four measurements, each with its baseline taken in the same run (the machine is small, shared and noisy,
so contenders alternate and medians are reported):

1. resident memory per model: packs vs dedicated Triton models (same models), PSS of tritonserver and
   all its stub processes once every member answered one request, minus the same server's PSS empty;
2. time from an empty server (process start) to N models servable: all packs loaded, and every member
   answered once (the dedicated figure is extrapolated from phase 1: it does not fit in memory);
3. first-request latency to a non-resident member vs warm requests to the same members;
4. rps and p99 of a Zipf(s=1.1) mix over N models at fixed concurrency, dynamic batching vs none,
   alternating A/B/A/B runs against two servers that are up at the same time.

Run: ``python -m benchmarks.data_plane [--quick]``. Prints a table, writes JSON to ``--out`` and (in full
mode) rewrites docs/benchmarks-data-plane.md with only the numbers of that run.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import psutil
import requests
from tqdm import tqdm

from fleet.triton_server import TritonServer
from model_repository.contract import MEMBER_REQUESTS, TRITON_SUCCESS, request_parameters, samples
from model_repository.generator import example_inputs, generate
from model_repository.manifest import Manifest
from model_repository.packing import PackPlan, build_repository
from model_repository.triton_config import PackSettings

MIB = 2**20
GIB = 2**30
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "results" / "bench-data-plane"
DEFAULT_DOCS = REPO_ROOT / "docs" / "benchmarks-data-plane.md"
JSON_NAME = "data_plane.json"


class BenchmarkError(RuntimeError):
    """The harness could not measure what it set out to (a request failed, a server did not load)."""


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and durations of one run; FULL and QUICK below, tests pass smaller ones."""

    mode: str = "full"
    seed: int = 0
    pack_size: int = 100
    load_workers: int = 4  # parallel load requests (Triton's default model-load thread count is 4)
    concurrency: int = 16  # requests in flight for "every member once" and the Zipf mix
    # 1. memory
    memory_models: int = 200
    dedicated_cap: int = 40
    min_available_gib: float = 4.0
    memory_repeats: int = 2  # packs, dedicated, packs, dedicated, ...
    # 2. time to servable
    servable_models: int = 1000
    servable_repeats: int = 3
    # 3. cold vs warm first request
    cold_members: int = 300
    latency_block: int = 20  # cold block then the same members warm, alternating
    # 4. Zipf mix, dynamic batching A/B
    zipf_models: int = 1000
    zipf_s: float = 1.1
    zipf_seconds: float = 15.0
    zipf_warmup_seconds: float = 3.0
    zipf_pairs: int = 4  # A/B pairs: A B A B ...


FULL = BenchConfig()
QUICK = BenchConfig(mode="quick", memory_models=60, dedicated_cap=10, memory_repeats=1, servable_models=300,
                    servable_repeats=1, cold_members=200, zipf_models=300, zipf_seconds=4.0,
                    zipf_warmup_seconds=1.0, zipf_pairs=2)


# ---- small helpers ----------------------------------------------------------------------------------
def _median(values: Iterable[float]) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def _percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    if not latencies_s:
        return {"count": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan"),
                "max_ms": float("nan")}
    array = np.asarray(latencies_s) * 1e3
    p50, p99 = np.percentile(array, [50, 99])
    return {"count": int(array.size), "p50_ms": float(p50), "p99_ms": float(p99),
            "mean_ms": float(array.mean()), "max_ms": float(array.max())}


def _progress(total: int | None, desc: str, enabled: bool, unit: str = "it") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True,
                mininterval=0.5, file=sys.stderr)


def _say(message: str, enabled: bool = True) -> None:
    if enabled:
        tqdm.write(message, file=sys.stderr)


# ---- models and repositories ------------------------------------------------------------------------
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


# ---- servers, memory, metrics -------------------------------------------------------------------------
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


# ---- the asyncio gRPC driver --------------------------------------------------------------------------
@dataclass
class DriveResult:
    latencies_s: list[float] = field(default_factory=list)  # successful requests, in completion order
    errors: int = 0
    first_error: str | None = None
    elapsed_s: float = 0.0
    distinct: int = 0

    @property
    def completed(self) -> int:
        return len(self.latencies_s)

    def require_ok(self, what: str) -> DriveResult:
        if self.errors:
            raise BenchmarkError(f"{what}: {self.errors} requests failed, first: {self.first_error}")
        return self


async def _drive(url: str, targets: Sequence[Target], order: Iterable[int], concurrency: int,
                 duration_s: float | None = None, on_done: Callable[[int], None] | None = None
                 ) -> DriveResult:
    """Send requests for targets[order[k]] with `concurrency` in flight, until the order runs out or
    `duration_s` passes. Inputs are built once per target, so the client does little per request."""
    from tritonclient.grpc.aio import InferenceServerClient, InferInput
    from tritonclient.utils import InferenceServerException

    inputs: dict[int, list] = {}

    def inputs_of(index: int) -> list:
        built = inputs.get(index)
        if built is None:
            target = targets[index]
            tensor = InferInput("INPUT__0", list(target.array.shape), target.dtype)
            tensor.set_data_from_numpy(target.array)
            built = inputs[index] = [tensor]
        return built

    result = DriveResult()
    iterator = iter(order)
    client = InferenceServerClient(url)
    started = time.perf_counter()
    deadline = started + duration_s if duration_s is not None else float("inf")

    async def worker() -> None:
        for index in iterator:
            if time.perf_counter() >= deadline:
                return
            target = targets[index]
            request_inputs = inputs_of(index)
            parameters = request_parameters(target.member) if target.member is not None else None
            sent = time.perf_counter()
            try:
                await client.infer(target.model, request_inputs, parameters=parameters)
            except InferenceServerException as error:
                result.errors += 1
                result.first_error = result.first_error or f"{target.model}/{target.member}: {error}"
            else:
                result.latencies_s.append(time.perf_counter() - sent)
            if on_done:
                on_done(1)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        result.elapsed_s = time.perf_counter() - started
        await client.close()
    result.distinct = len(inputs)
    return result


def drive(url: str, targets: Sequence[Target], order: Iterable[int], concurrency: int,
          duration_s: float | None = None, desc: str | None = None, progress: bool = False,
          total: int | None = None) -> DriveResult:
    with _progress(total, desc or "requests", progress and desc is not None, "req") as bar:
        return asyncio.run(_drive(url, targets, order, concurrency, duration_s, bar.update))


def answer_each_once(server: TritonServer, targets: Sequence[Target], concurrency: int, desc: str,
                     progress: bool) -> DriveResult:
    result = drive(server.grpc_url, targets, range(len(targets)), concurrency, desc=desc, progress=progress,
                   total=len(targets))
    return result.require_ok(desc)


# ---- 1. memory per model ------------------------------------------------------------------------------
def measure_packs_memory(repo: Path, plans: Sequence[PackPlan], targets: Sequence[Target], config: BenchConfig,
                         logs: Path, progress: bool) -> dict:
    with make_server(repo, logs, "memory-packs") as server:
        empty = sample_memory(server, settle_s=0.5)
        load_s = load_models(server, [p.name for p in plans], config.load_workers, "memory: load packs",
                             progress)
        answer_each_once(server, targets, config.concurrency, "memory: warm pack members", progress)
        loaded = sample_memory(server)
    count = len(targets)
    return {
        "layout": "packs", "models": count, "triton_models": len(plans), "load_s": load_s,
        "empty": empty, "loaded": loaded, "stopped": "all",
        "pss_mb_per_model": (loaded["pss"] - empty["pss"]) / count / MIB,
        "uss_mb_per_model": (loaded["uss"] - empty["uss"]) / count / MIB,
        "rss_mb_per_model": (loaded["rss"] - empty["rss"]) / count / MIB,
    }


def measure_dedicated_memory(repo: Path, targets: Sequence[Target], config: BenchConfig, logs: Path,
                             progress: bool) -> dict:
    """Load dedicated models a few at a time until the cap, the end, or memory runs short."""
    names = [t.model for t in targets]
    cap = min(config.dedicated_cap, len(names))
    loaded_count, load_s, stopped = 0, 0.0, "all" if cap == len(names) else "cap"
    with make_server(repo, logs, "memory-dedicated") as server:
        empty = sample_memory(server, settle_s=0.5)
        with _progress(cap, "memory: dedicated models", progress, "model") as bar:
            while loaded_count < cap:
                available = psutil.virtual_memory().available
                if available < config.min_available_gib * GIB:
                    stopped = f"memory (available {available / GIB:.1f} GiB < {config.min_available_gib} GiB)"
                    break
                chunk = list(range(loaded_count, min(cap, loaded_count + config.load_workers)))
                load_s += load_models(server, [names[i] for i in chunk], config.load_workers, "", False)
                drive(server.grpc_url, targets, chunk, len(chunk)).require_ok("memory: warm dedicated")
                loaded_count += len(chunk)
                bar.update(len(chunk))
        if loaded_count == 0:
            raise BenchmarkError(f"no dedicated model could be loaded: {stopped}")
        loaded = sample_memory(server)
    return {
        "layout": "dedicated", "models": loaded_count, "of": len(names), "triton_models": loaded_count,
        "stopped": stopped, "load_s": load_s, "empty": empty, "loaded": loaded,
        "pss_mb_per_model": (loaded["pss"] - empty["pss"]) / loaded_count / MIB,
        "uss_mb_per_model": (loaded["uss"] - empty["uss"]) / loaded_count / MIB,
        "rss_mb_per_model": (loaded["rss"] - empty["rss"]) / loaded_count / MIB,
    }


def phase_memory(models_dir: Path, work: Path, config: BenchConfig, progress: bool) -> dict:
    source = subset(models_dir, config.memory_models, work / f"subset-{config.memory_models}")
    packs_repo, dedicated_repo = work / "repos" / "memory-packs", work / "repos" / "memory-dedicated"
    pack_plans = build(source, packs_repo, config.pack_size)
    dedicated_plans = build(source, dedicated_repo, config.pack_size, dedicated=True)
    pack_targets = targets_for(pack_plans, source, config.seed)
    dedicated_targets = targets_for(dedicated_plans, source, config.seed)
    runs = []
    for repeat in range(config.memory_repeats):
        _say(f"[1/4] memory, repeat {repeat + 1}/{config.memory_repeats}: packs", progress)
        runs.append({"repeat": repeat, **measure_packs_memory(packs_repo, pack_plans, pack_targets, config,
                                                               work / "logs", progress)})
        _say(f"[1/4] memory, repeat {repeat + 1}/{config.memory_repeats}: dedicated", progress)
        runs.append({"repeat": repeat, **measure_dedicated_memory(dedicated_repo, dedicated_targets, config,
                                                                   work / "logs", progress)})
    packs = [r for r in runs if r["layout"] == "packs"]
    dedicated = [r for r in runs if r["layout"] == "dedicated"]
    summary = {}
    for name, group in (("packs", packs), ("dedicated", dedicated)):
        mb = _median(r["pss_mb_per_model"] for r in group)
        summary[name] = {
            "pss_mb_per_model": mb, "uss_mb_per_model": _median(r["uss_mb_per_model"] for r in group),
            "models_per_gib": 1024 / mb if mb > 0 else float("inf"),
            "models": _median(r["models"] for r in group),
            "load_s_per_model": _median(r["load_s"] / r["models"] for r in group),
        }
    summary["packs"]["triton_models"] = len(pack_plans)
    summary["dedicated"]["stopped"] = [r["stopped"] for r in dedicated]
    summary["dedicated"]["of"] = len(dedicated_targets)
    summary["ratio_models_per_gib"] = summary["packs"]["models_per_gib"] / summary["dedicated"]["models_per_gib"]
    return {"models": config.memory_models, "pack_size": config.pack_size, "runs": runs, "summary": summary}


# ---- 2. time from an empty server to N models servable -----------------------------------------------
def phase_servable(models_dir: Path, work: Path, config: BenchConfig, memory: dict, progress: bool) -> dict:
    source = subset(models_dir, config.servable_models, work / f"subset-{config.servable_models}")
    repo = work / "repos" / "servable"
    plans = build(source, repo, config.pack_size)
    targets = targets_for(plans, source, config.seed)
    runs = []
    for repeat in range(config.servable_repeats):
        _say(f"[2/4] empty server -> {len(targets)} models servable, repeat {repeat + 1}/"
             f"{config.servable_repeats}", progress)
        started = time.perf_counter()
        server = make_server(repo, work / "logs", "servable")
        try:
            server.start()
            ready = time.perf_counter() - started
            load_models(server, [p.name for p in plans], config.load_workers, "servable: load packs", progress)
            packs_loaded = time.perf_counter() - started
            answers = answer_each_once(server, targets, config.concurrency, "servable: every member once",
                                       progress)
            all_answered = time.perf_counter() - started
            if server.ready_models() != {p.name for p in plans}:
                raise BenchmarkError("a pack is not ready after every member answered")
        finally:
            server.stop()
        runs.append({"repeat": repeat, "ready_s": ready, "packs_loaded_s": packs_loaded,
                     "all_answered_s": all_answered, "answers": len(answers.latencies_s),
                     "first_answers": _percentiles_ms(answers.latencies_s)})
    dedicated = memory["summary"]["dedicated"]
    per_model_s = dedicated["load_s_per_model"]
    summary = {
        "ready_s": _median(r["ready_s"] for r in runs),
        "packs_loaded_s": _median(r["packs_loaded_s"] for r in runs),
        "all_answered_s": _median(r["all_answered_s"] for r in runs),
        # Dedicated does not fit: extrapolated from phase 1 (same load parallelism), labelled as such.
        "dedicated_extrapolated_load_s": per_model_s * len(targets),
        "dedicated_extrapolated_gib": dedicated["pss_mb_per_model"] * len(targets) / 1024,
    }
    summary["ratio_dedicated_over_packs_loaded"] = summary["dedicated_extrapolated_load_s"] / summary[
        "packs_loaded_s"]
    return {"models": len(targets), "packs": len(plans), "runs": runs, "summary": summary}


# ---- 3 and 4: cold vs warm, Zipf mix with and without dynamic batching -------------------------------
async def _cold_then_warm(url: str, targets: Sequence[Target], primers: Sequence[int], sample: Sequence[int],
                          block: int, bar: tqdm) -> dict[str, list[float]]:
    """One request at a time: a block of never-requested members, then the same block a second and a third
    time. The second request is reported apart: TorchScript's profiling executor optimises a module's graph
    on its second call, so only the third shows a member's steady warm latency."""
    passes: dict[str, list[float]] = {"cold": [], "second": [], "warm": []}
    for index in primers:  # the first request of each pack stub is not a member's cold cost
        (await _drive(url, targets, [index], 1)).require_ok("prime packs")
    for start in range(0, len(sample), block):
        chunk = sample[start:start + block]
        for sink in passes.values():
            result = (await _drive(url, targets, chunk, 1)).require_ok("cold/warm requests")
            sink.extend(result.latencies_s)
            bar.update(len(chunk))
    return passes


def zipf_order(count: int, s: float, length: int, rank_seed: int, draw_seed: int) -> np.ndarray:
    """`length` target indices drawn from a finite Zipf(s) over `count` targets. Ranks are a seeded random
    permutation, so the hot members spread over packs; the same seeds give the same sequence."""
    weights = np.arange(1, count + 1, dtype=np.float64) ** -s
    ranked = np.random.default_rng(rank_seed).permutation(count)
    draws = np.random.default_rng(draw_seed).choice(count, size=length, p=weights / weights.sum())
    return ranked[draws]


def _flush_member_metrics(server: TritonServer, targets: Sequence[Target]) -> None:
    """The pack flushes its per-member counters at most once a second, on a request: wait, then send one
    request to each pack so what the run did is on the metrics port."""
    time.sleep(1.1)
    first_of_pack: dict[str, int] = {}
    for index, target in enumerate(targets):
        first_of_pack.setdefault(target.model, index)
    drive(server.grpc_url, targets, list(first_of_pack.values()), 4).require_ok("flush metrics")


def zipf_run(server: TritonServer, label: str, targets: Sequence[Target], config: BenchConfig, pair: int,
             progress: bool) -> dict:
    order = zipf_order(len(targets), config.zipf_s, int(config.zipf_seconds * 40_000) + 10_000,
                       config.seed, config.seed + 1000 + pair)
    _flush_member_metrics(server, targets)
    before = metric_totals(server.metrics())
    me = psutil.Process()
    cpu_before = (tree_cpu_seconds(server.process.pid), sum(me.cpu_times()[:2]), psutil.cpu_times())
    result = drive(server.grpc_url, targets, itertools.cycle(order.tolist()), config.concurrency,
                   duration_s=config.zipf_seconds, desc=f"zipf {label} run {pair + 1}", progress=progress)
    machine = psutil.cpu_times()
    cpu = {"server_cores": (tree_cpu_seconds(server.process.pid) - cpu_before[0]) / result.elapsed_s,
           "client_cores": (sum(me.cpu_times()[:2]) - cpu_before[1]) / result.elapsed_s}
    busy = sum(machine) - sum(cpu_before[2]) or 1.0
    # the whole machine's busy share: what is not ours is other work on the shared machine
    cpu["machine_busy"] = 1 - ((machine.idle + machine.iowait) - (cpu_before[2].idle + cpu_before[2].iowait)) / busy
    after_triton = metric_totals(server.metrics())
    _flush_member_metrics(server, targets)
    after_members = metric_totals(server.metrics())
    delta = _delta(after_triton, before)
    member_delta = _delta(after_members, before)
    success = max(delta[TRITON_SUCCESS], 1.0)
    forward_requests = max(member_delta[MEMBER_REQUESTS], 1.0)
    return {
        "config": label, "pair": pair, "seconds": result.elapsed_s, "completed": result.completed,
        "errors": result.errors, "first_error": result.first_error, "distinct_members": result.distinct,
        "rps": result.completed / result.elapsed_s, **_percentiles_ms(result.latencies_s), "cpu": cpu,
        "server": {
            "requests": delta[TRITON_SUCCESS],
            "avg_batch": delta["nv_inference_count"] / max(delta["nv_inference_exec_count"], 1.0),
            "request_us": delta["nv_inference_request_duration_us"] / success,
            "queue_us": delta["nv_inference_queue_duration_us"] / success,
            "compute_input_us": delta["nv_inference_compute_input_duration_us"] / success,
            "compute_infer_us": delta["nv_inference_compute_infer_duration_us"] / success,
            "compute_output_us": delta["nv_inference_compute_output_duration_us"] / success,
            # the member's forward pass as model.py times it, per request (a batch's pass is shared)
            "torch_forward_us": member_delta["fleet_member_compute_duration_us_total"] / forward_requests,
            "member_loads": member_delta["fleet_member_loads_total"],
            "evictions": member_delta["fleet_member_evictions_total"],
        },
    }


def phase_latency_and_zipf(models_dir: Path, work: Path, config: BenchConfig, progress: bool) -> tuple[dict, dict]:
    source = subset(models_dir, config.zipf_models, work / f"subset-{config.zipf_models}")
    repo_a, repo_b = work / "repos" / "zipf-batching", work / "repos" / "zipf-no-batching"
    plans = build(source, repo_a, config.pack_size, settings=PackSettings())
    build(source, repo_b, config.pack_size, settings=PackSettings(dynamic_batching=False))
    targets = targets_for(plans, source, config.seed)
    names = [p.name for p in plans]
    first_of_pack: dict[str, int] = {}
    for index, target in enumerate(targets):
        first_of_pack.setdefault(target.model, index)
    primers = list(first_of_pack.values())
    primer_set = set(primers)
    candidates = [i for i in range(len(targets)) if i not in primer_set]
    count = min(config.cold_members, len(candidates))
    sample = np.random.default_rng(config.seed + 7).choice(candidates, size=count, replace=False).tolist()

    logs = work / "logs"
    _say(f"[3/4] first request to {count} non-resident members vs warm (server A: dynamic batching)", progress)
    with make_server(repo_a, logs, "zipf-batching") as server_a:
        version = requests.get(f"{server_a.http_url}/v2", timeout=10).json().get("version", "unknown")
        load_models(server_a, names, config.load_workers, "A: load packs", progress)
        before = metric_totals(server_a.metrics())
        with _progress(3 * count, "cold/warm requests", progress, "req") as bar:
            passes = asyncio.run(_cold_then_warm(server_a.grpc_url, targets, primers, sample,
                                                 config.latency_block, bar))
        _flush_member_metrics(server_a, targets)
        loads = _delta(metric_totals(server_a.metrics()), before)["fleet_member_loads_total"]
        latency = {
            "members": count, "block": config.latency_block, "triton_models": len(plans),
            "cold": _percentiles_ms(passes["cold"]), "second": _percentiles_ms(passes["second"]),
            "warm": _percentiles_ms(passes["warm"]),
            # every sampled member and each pack's primer loaded exactly once, nothing else
            "member_loads_observed": loads, "member_loads_expected": count + len(primers),
        }
        latency["ratio_p50"] = latency["cold"]["p50_ms"] / latency["warm"]["p50_ms"]
        latency["ratio_p99"] = latency["cold"]["p99_ms"] / latency["warm"]["p99_ms"]

        _say(f"[4/4] Zipf s={config.zipf_s} over {len(targets)} models, {config.concurrency} in flight, "
             f"{config.zipf_seconds:g} s per run, A/B x {config.zipf_pairs}", progress)
        answer_each_once(server_a, targets, config.concurrency, "A: warm every member", progress)
        with make_server(repo_b, logs, "zipf-no-batching") as server_b:
            load_models(server_b, names, config.load_workers, "B: load packs", progress)
            answer_each_once(server_b, targets, config.concurrency, "B: warm every member", progress)
            servers = {"batching": server_a, "no_batching": server_b}
            warm_order = zipf_order(len(targets), config.zipf_s, 100_000, config.seed, config.seed + 999)
            for label, server in servers.items():  # past TorchScript's first profiling runs of hot members
                drive(server.grpc_url, targets, itertools.cycle(warm_order.tolist()), config.concurrency,
                      duration_s=config.zipf_warmup_seconds).require_ok(f"zipf warm-up {label}")
            runs = []
            for pair in range(config.zipf_pairs):
                for label, server in servers.items():
                    run = zipf_run(server, label, targets, config, pair, progress)
                    if run["errors"]:
                        raise BenchmarkError(f"zipf {label}: {run['errors']} errors, first: {run['first_error']}")
                    runs.append(run)
    summary = {}
    for label in ("batching", "no_batching"):
        group = [r for r in runs if r["config"] == label]
        summary[label] = {key: _median(r[key] for r in group) for key in ("rps", "p50_ms", "p99_ms")}
        summary[label]["avg_batch"] = _median(r["server"]["avg_batch"] for r in group)
    summary["ratio_rps"] = summary["batching"]["rps"] / summary["no_batching"]["rps"]
    summary["ratio_p99"] = summary["batching"]["p99_ms"] / summary["no_batching"]["p99_ms"]
    zipf = {"models": len(targets), "packs": len(plans), "s": config.zipf_s, "concurrency": config.concurrency,
            "seconds_per_run": config.zipf_seconds, "pairs": config.zipf_pairs, "runs": runs,
            "summary": summary, "tritonserver_version": version}
    return latency, zipf


# ---- report -------------------------------------------------------------------------------------------
def environment() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = package_versions(("nvidia-pytriton", "torch", "numpy", "tritonclient", "grpcio"))
    return {"cpu_model": cpu, "logical_cpus": os.cpu_count(), "ram_gib": psutil.virtual_memory().total / GIB,
            "kernel": platform.release(), "python": platform.python_version(), "versions": versions}


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Installed version of each package, or "not installed"."""
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _f(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def table(results: dict) -> str:
    memory, servable = results["memory"]["summary"], results["servable"]["summary"]
    latency, zipf = results["latency"], results["zipf"]["summary"]
    mem_models, n_serv = results["memory"]["models"], results["servable"]["models"]
    stopped = ", ".join(sorted(set(memory["dedicated"]["stopped"])))
    rows = [
        ("measurement", "packs", "baseline", "ratio"),
        (f"1. resident memory per model (PSS, warm, {mem_models} models)",
         f"{_f(memory['packs']['pss_mb_per_model'], 2)} MB ({_f(memory['packs']['models_per_gib'], 0)} "
         f"models/GiB; {memory['packs']['triton_models']} packs)",
         f"{_f(memory['dedicated']['pss_mb_per_model'])} MB ({_f(memory['dedicated']['models_per_gib'], 1)} "
         f"models/GiB; dedicated, {memory['dedicated']['models']:.0f} of {memory['dedicated']['of']} "
         f"loaded, stopped: {stopped})",
         f"{_f(memory['ratio_models_per_gib'], 0)}x models per GiB"),
        (f"2a. empty server -> {n_serv} models: packs loaded",
         f"{_f(servable['packs_loaded_s'])} s ({results['servable']['packs']} packs; server ready "
         f"{_f(servable['ready_s'], 2)} s)",
         f"dedicated, extrapolated from phase 1: {_f(servable['dedicated_extrapolated_load_s'], 0)} s, "
         f"{_f(servable['dedicated_extrapolated_gib'])} GiB PSS",
         f"{_f(servable['ratio_dedicated_over_packs_loaded'])}x faster"),
        (f"2b. empty server -> {n_serv} models: every member answered once",
         f"{_f(servable['all_answered_s'])} s", "-", "-"),
        (f"3. first request to a non-resident member, p50 / p99 ({latency['members']} members)",
         f"cold {_f(latency['cold']['p50_ms'], 2)} / {_f(latency['cold']['p99_ms'], 2)} ms",
         f"warm, same members (3rd request): {_f(latency['warm']['p50_ms'], 2)} / "
         f"{_f(latency['warm']['p99_ms'], 2)} ms; 2nd request: {_f(latency['second']['p50_ms'], 2)} / "
         f"{_f(latency['second']['p99_ms'], 2)} ms",
         f"{_f(latency['ratio_p50'])}x / {_f(latency['ratio_p99'])}x slower cold"),
        (f"4a. Zipf s={results['zipf']['s']} over {results['zipf']['models']} models, "
         f"{results['zipf']['concurrency']} in flight: rps",
         f"{_f(zipf['batching']['rps'], 0)} (dynamic batching, avg batch {_f(zipf['batching']['avg_batch'], 2)})",
         f"{_f(zipf['no_batching']['rps'], 0)} (no dynamic batching)", f"{_f(zipf['ratio_rps'], 2)}x"),
        ("4b. same runs: p50 / p99 latency",
         f"{_f(zipf['batching']['p50_ms'], 2)} / {_f(zipf['batching']['p99_ms'], 2)} ms",
         f"{_f(zipf['no_batching']['p50_ms'], 2)} / {_f(zipf['no_batching']['p99_ms'], 2)} ms",
         f"p99 {_f(zipf['ratio_p99'], 2)}x"),
    ]
    return _markdown(rows)


def runs_table(results: dict) -> str:
    rows = [("run", "config", "rps", "p50 ms", "p99 ms", "avg batch", "queue us/req", "infer us/req",
             "torch fwd us/req", "server cores", "client cores", "machine busy")]
    for k, run in enumerate(results["zipf"]["runs"], 1):
        server, cpu = run["server"], run["cpu"]
        rows.append((str(k), run["config"], _f(run["rps"], 0), _f(run["p50_ms"], 2), _f(run["p99_ms"], 2),
                     _f(server["avg_batch"], 2), _f(server["queue_us"], 0), _f(server["compute_infer_us"], 0),
                     _f(server["torch_forward_us"], 0), _f(cpu["server_cores"], 2), _f(cpu["client_cores"], 2),
                     f"{cpu['machine_busy']:.0%}"))
    return _markdown(rows)


def _markdown(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def scale_note(config: BenchConfig) -> str:
    if config.mode == "full":
        return "Full mode."
    return (f"{config.mode.upper()} mode: smaller counts ({config.memory_models} models for memory, dedicated cap "
            f"{config.dedicated_cap}, {config.servable_models} to servable, {config.cold_members} cold members, "
            f"Zipf over {config.zipf_models} models for {config.zipf_seconds:g} s x {config.zipf_pairs} A/B "
            "pairs) and shorter durations; not comparable with full-mode numbers.")


def _display(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def observations(results: dict) -> str:
    """A few sentences derived from this run's numbers (no number from elsewhere)."""
    memory, zipf = results["memory"]["summary"], results["zipf"]
    runs = zipf["runs"]
    forward_share = _median(r["server"]["torch_forward_us"] / r["server"]["compute_infer_us"]
                            for r in runs if r["config"] == "no_batching" and r["server"]["compute_infer_us"])
    busy = _median(r["cpu"]["machine_busy"] for r in runs)
    ours = _median(r["cpu"]["server_cores"] + r["cpu"]["client_cores"] for r in runs)
    ratio = zipf["summary"]["ratio_rps"]
    cores = results["environment"]["logical_cpus"]
    effect = "raised" if ratio > 1.05 else "lowered" if ratio < 0.95 else "did not change (within 5%)"
    lines = [
        f"- A pack member costs {memory['packs']['pss_mb_per_model']:.2f} MB PSS with its share of the pack's stub; "
        f"a dedicated model costs {memory['dedicated']['pss_mb_per_model']:.0f} MB, almost all of it a stub "
        "process that imports torch.",
        f"- Dynamic batching {effect} throughput on the Zipf mix ({ratio:.2f}x) while forming batches of "
        f"{zipf['summary']['batching']['avg_batch']:.2f} requests on average. The pack runs one forward pass per "
        f"member in a batch, and with {zipf['models']} members in {zipf['packs']} packs a batch saves a forward "
        "pass only when it holds two requests for the same member.",
        f"- Without batching, the member's torch forward pass is {forward_share:.0%} of the execution time Triton "
        "measures per request; the rest is moving the request and response between Triton and the "
        "Python-backend stub and model.py's work around the forward pass.",
        f"- The machine's CPUs were {busy:.0%} busy during the Zipf runs (median); tritonserver, its stubs and the "
        f"client used {ours:.2f} cores, other processes on the shared machine about "
        f"{max(0.0, busy * cores - ours):.2f} of the {cores}.",
    ]
    return "\n".join(lines)


def write_docs(results: dict, path: Path, json_path: Path) -> None:
    env, config = results["environment"], results["config"]
    versions = env["versions"]
    memory = results["memory"]["summary"]
    text = f"""# Data-plane benchmark: packs vs one Triton model per user model

Generated by `python -m benchmarks.data_plane{' --quick' if config['mode'] == 'quick' else ''}` on
{results['date']}. Every number below was measured in that one run; the raw results are in
`{_display(json_path)}` (git-ignored).
{scale_note(BenchConfig(**config))}

## Machine and versions

- CPU: {env['cpu_model']}, {env['logical_cpus']} logical cores; RAM {env['ram_gib']:.1f} GiB; Linux {env['kernel']}
- tritonserver {results['zipf']['tritonserver_version']} (PyPI nvidia-pytriton {versions['nvidia-pytriton']},
  Python backend), Python {env['python']}, torch {versions['torch']}, numpy {versions['numpy']},
  tritonclient {versions['tritonclient']}, grpcio {versions['grpcio']}
- Load average (1 min) at start / end: {results['load_average'][0]:.2f} / {results['load_average'][1]:.2f}. The
  machine is shared and noisy: contenders alternate within the run and medians are reported.

## Results

{results['table']}

Zipf runs, in the order they ran (A/B alternating). Server-side columns come from Triton's metrics, per
request (Triton charges a whole batch's execution to each request in it); "torch fwd" is the member's forward
pass as the pack runtime times it; cores are CPU seconds per second of tritonserver with its stubs and of the
client; "machine busy" is the whole machine's CPU use in that run, other tenants included.

{results['runs_table']}

Observations from this run:

{observations(results)}

## Method

Models come from `model_repository.generator.generate` (seed {config['seed']}: MLP, CNN and EmbeddingBag
text models in equal numbers, TorchScript). Packs hold at most {config['pack_size']} members of one
architecture (`build_repository(..., pack_size={config['pack_size']})`), one CPU instance each, torch on one
thread. Servers are the real `tritonserver` in explicit model-control mode (`fleet.triton_server.TritonServer`),
models loaded with {config['load_workers']} parallel load requests. Clients are `tritonclient.grpc.aio`
coroutines on one channel with inputs built once per member, batch 1 per request.

1. **Memory.** The same {results['memory']['models']} models as packs and as dedicated models (one Python-backend
   Triton model each). For each layout: start a server, measure it empty, load, send one request to every
   (loaded) member, wait 1 s, then take the median of three samples of PSS (`psutil.memory_full_info().pss`)
   summed over tritonserver and all its descendant stub processes; subtract the empty server's PSS and
   divide by the models loaded. Dedicated models load {config['load_workers']} at a time and stop at
   {config['dedicated_cap']} models or when less than {config['min_available_gib']:g} GiB is available
   (this run: {', '.join(sorted(set(memory['dedicated']['stopped'])))}). Layouts alternate
   ({config['memory_repeats']} x packs, dedicated); medians. USS per model (private memory only):
   packs {memory['packs']['uss_mb_per_model']:.2f} MB, dedicated {memory['dedicated']['uss_mb_per_model']:.1f} MB.
   PSS splits shared pages (libtorch, libpython) among every process that maps them, including processes
   outside the server, so it moves a little with whatever else runs on the machine.
2. **Time to servable.** From `Popen` of an empty server: until every pack is loaded, and until every one
   of the {results['servable']['models']} members answered one request ({config['concurrency']} in flight;
   each member's first request loads it into its pack's LRU). Median of {config['servable_repeats']} fresh
   server(s). Dedicated cannot hold that many models here; its figure is its measured per-model load time
   from phase 1 times the model count, and its memory need is its PSS per model times the count.
3. **Cold vs warm.** On a fresh server with every pack loaded and one request sent to one member of each pack
   (so a pack's first-ever request is not counted), {results['latency']['members']} members never requested
   before get one request at a time, in blocks of {config['latency_block']}; each block is followed by the same
   members twice more, so noise hits cold and warm alike. "Warm" is the third request: TorchScript's profiling
   executor optimises each module's graph during its second call, which the table shows apart. Member loads
   seen on the metrics port: {results['latency']['member_loads_observed']:.0f} (expected
   {results['latency']['member_loads_expected']}).
4. **Zipf mix.** Two repositories of the same {results['zipf']['models']} models: `PackSettings()` (dynamic
   batching, 500 us queue delay) and `PackSettings(dynamic_batching=False)`, both servers up, every member
   warmed and a {config['zipf_warmup_seconds']:g} s Zipf warm-up each. Then A/B alternating runs of
   {config['zipf_seconds']:g} s each with {config['concurrency']} requests in flight; member ids drawn from a finite
   Zipf(s={config['zipf_s']}) over a seeded random ranking (so hot members spread over packs), the same
   sequence for A and B within a pair. Medians over runs.
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run(config: BenchConfig = FULL, out: Path = DEFAULT_OUT, work: Path | None = None,
        docs: Path | None = None, progress: bool = True) -> dict:
    """Run every phase; write out/data_plane.json (and `docs` when given); return the results."""
    out = Path(out)
    work = Path(work) if work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    _say(scale_note(config), progress)
    needed = max(config.memory_models, config.servable_models, config.zipf_models)
    models_dir = ensure_models(work, needed, config.seed, progress)
    memory = phase_memory(models_dir, work, config, progress)
    servable = phase_servable(models_dir, work, config, memory, progress)
    latency, zipf = phase_latency_and_zipf(models_dir, work, config, progress)
    results = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "config": asdict(config), "environment": environment(),
        "load_average": [load_start, os.getloadavg()[0]],
        "memory": memory, "servable": servable, "latency": latency, "zipf": zipf,
        "wall_s": time.perf_counter() - started,
    }
    results["table"] = table(results)
    results["runs_table"] = runs_table(results)
    json_path = out / JSON_NAME
    json_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    stamped = out / f"data_plane-{config.mode}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    shutil.copyfile(json_path, stamped)
    if docs is not None:
        write_docs(results, Path(docs), json_path)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller counts and shorter runs (about 2-3 minutes); numbers not comparable")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the JSON results")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for generated models, repositories and server logs (default OUT/work)")
    parser.add_argument("--docs", type=Path, default=None,
                        help=f"markdown report to rewrite (default: {DEFAULT_DOCS.relative_to(REPO_ROOT)} in "
                             "full mode, none with --quick)")
    parser.add_argument("--no-docs", action="store_true", help="do not write the markdown report")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return replace(QUICK if args.quick else FULL, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    docs = None if args.no_docs else (args.docs or (None if args.quick else DEFAULT_DOCS))
    results = run(config, args.out, args.work, docs)
    print(f"\nData-plane benchmark, {results['date']}: {scale_note(config)}")
    env = results["environment"]
    print(f"{env['cpu_model']}, {env['logical_cpus']} cores, {env['ram_gib']:.1f} GiB; tritonserver "
          f"{results['zipf']['tritonserver_version']}, torch {env['versions']['torch']}, numpy "
          f"{env['versions']['numpy']}; load average {results['load_average'][0]:.2f} -> "
          f"{results['load_average'][1]:.2f}\n")
    print(results["table"])
    print("\nZipf runs in order:\n")
    print(results["runs_table"])
    print(f"\nJSON: {Path(args.out) / JSON_NAME}" + (f"; report: {docs}" if docs else "")
          + f"; wall {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
