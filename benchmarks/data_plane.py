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
import itertools
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
import requests
from tqdm import tqdm

from benchmarks.common import (
    GIB,
    MIB,
    REPO_ROOT,
    BenchmarkError,
    _median,
    _percentiles_ms,
    _progress,
    _say,
    environment,
)
from benchmarks.data_plane_config import DEFAULT_DOCS, DEFAULT_OUT, FULL, JSON_NAME, QUICK, BenchConfig
from benchmarks.data_plane_report import runs_table, scale_note, table, write_docs
from benchmarks.driver import _drive, answer_each_once, drive, zipf_order
from benchmarks.serving import (
    Target,
    _delta,
    build,
    ensure_models,
    load_models,
    make_server,
    metric_totals,
    sample_memory,
    subset,
    targets_for,
    tree_cpu_seconds,
)
from fleet.triton_server import TritonServer
from model_repository.contract import MEMBER_REQUESTS, TRITON_SUCCESS
from model_repository.packing import PackPlan
from model_repository.triton_config import PackSettings


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
