"""Load generators compared on one server: the locust gRPC user vs the raw asyncio driver.

Why: locust reports are how the fleet's capacity is sized (``fleet report``), so how much of the server's
real rate locust can offer matters. Both generators come from ``loadtest/`` unchanged: the locustfile
``loadtest/triton_models.py`` (gevent tritonclient, one user = one request in flight) and
``loadtest.raw_driver.run_models`` (``tritonclient.grpc.aio``, N in flight), with the same manifest, pack
size, Zipf mix and concurrency (users = in flight), against the same packs server; runs alternate.

Locust's rate includes its ramp-up (all users spawned within the first second) and its own start-up is
not counted; the raw driver's run is exactly ``seconds`` long.
"""
from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import _median, _say
from loadtest.catalogue import load_catalogue
from loadtest.raw_driver import run_models
from loadtest.results import parse_stats_csv
from loadtest.sweep import SweepPlan
from loadtest.workload import build_workload


@dataclass(frozen=True)
class LoadgenConfig:
    users: int = 16  # locust users = raw driver's requests in flight
    seconds: int = 15
    rounds: int = 2
    zipf_s: float = 1.1


def run_locust(grpc_url: str, models_dir: Path, pack_size: int, config: LoadgenConfig, out: Path) -> dict:
    """One headless locust run; its aggregated statistics."""
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / f"locust-{time.strftime('%H%M%S')}"
    plan = SweepPlan("models", grpc_url, (config.users,), config.seconds, instance_type="-", locust_args=(
        "--models-from", str(models_dir / "manifest.json"), "--pack-size", str(pack_size), "--mix", "zipf",
        "--zipf-s", str(config.zipf_s), "--loglevel", "WARNING"))
    command = plan.command(config.users, prefix)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=config.seconds + 120)
    wall = time.perf_counter() - started
    stats = Path(f"{prefix}_stats.csv")
    if not stats.exists():
        raise RuntimeError(f"locust wrote no statistics (exit {done.returncode}): "
                           f"{(done.stdout + done.stderr)[-2000:]}")
    total = parse_stats_csv(stats.read_text()).aggregated
    return {"generator": "locust", "returncode": done.returncode, "requests": total.requests,
            "failures": total.failures, "rps": total.rps, "p50_ms": total.p50_ms, "p90_ms": total.p90_ms,
            "p99_ms": total.p99_ms, "process_wall_s": wall, "stats_csv": str(stats)}


def run_raw(grpc_url: str, models_dir: Path, pack_size: int, config: LoadgenConfig, seed: int) -> dict:
    workload = build_workload(load_catalogue(str(models_dir), pack_size, None), "zipf", config.zipf_s, seed=seed)
    result = asyncio.run(run_models(workload, grpc_url, config.users, float(config.seconds), seed=seed))
    summary = result.summary()
    return {"generator": "raw_asyncio", "requests": summary["requests"], "failures": summary["failures"],
            "rps": result.rps, "p50_ms": result.percentile_ms(50), "p90_ms": result.percentile_ms(90),
            "p99_ms": result.percentile_ms(99), "errors": summary["errors"]}


def phase_loadgen(grpc_url: str, models_dir: Path, pack_size: int, config: LoadgenConfig, out: Path,
                  seed: int = 0, progress: bool = True) -> dict:
    """Alternating locust / raw runs against a server that already serves `models_dir` in packs."""
    runs = []
    for round_ in range(config.rounds):
        order = ("locust", "raw_asyncio") if round_ % 2 == 0 else ("raw_asyncio", "locust")
        for generator in order:
            _say(f"loadgen: round {round_ + 1}/{config.rounds}: {generator}, {config.users} users/in flight, "
                 f"{config.seconds} s", progress)
            if generator == "locust":
                run = run_locust(grpc_url, models_dir, pack_size, config, out)
            else:
                run = run_raw(grpc_url, models_dir, pack_size, config, seed + round_)
            runs.append({"round": round_, **run})
    summary = {}
    for generator in ("locust", "raw_asyncio"):
        mine = [r for r in runs if r["generator"] == generator]
        summary[generator] = {key: _median(r[key] for r in mine) for key in ("rps", "p50_ms", "p99_ms")}
        summary[generator]["failures"] = sum(r["failures"] for r in mine)
    summary["ratio_locust_over_raw_rps"] = summary["locust"]["rps"] / summary["raw_asyncio"]["rps"]
    return {"users": config.users, "seconds_per_run": config.seconds, "rounds": config.rounds,
            "zipf_s": config.zipf_s, "runs": runs, "summary": summary}
