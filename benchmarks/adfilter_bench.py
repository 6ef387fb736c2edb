"""Ad filter: raw OpenRTB JSON in, filter decision out, on the real tritonserver at saturation.

Why: an exchange gives a bidder ~10 ms end to end, so the filter's p99 under full load is the number that
matters. Reuses ``adfilter.benchmark``: ``run_triton_benchmark`` (``tritonclient.grpc.aio``, one bid
request per call, N in flight, every request's latency) at a few concurrencies, and as the baseline
measured in the same run, ``run_benchmark``: the same featurise + score work in-process on one thread,
without Triton or gRPC (the work's own cost). A small model is trained first (cached per size and seed).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from adfilter.benchmark import run_benchmark, run_triton_benchmark
from adfilter.train import TrainConfig, train
from adfilter.triton_repo import MODEL_NAME, TritonSettings, build_triton_model
from benchmarks.common import _median, _say
from benchmarks.serving import make_server


@dataclass(frozen=True)
class AdfilterConfig:
    train_rows: int = 30_000
    train_epochs: int = 4
    requests: int = 8000  # per Triton run (distinct synthetic bid requests)
    concurrency: tuple[int, ...] = (4, 16, 64)
    rounds: int = 2
    p99_budget_ms: float = 10.0
    seed: int = 7


def trained_model(work: Path, config: AdfilterConfig) -> Path:
    out = work / f"adfilter-model-{config.train_rows}-e{config.train_epochs}"
    if (out / "metadata.json").exists():
        return out
    train(TrainConfig(rows=config.train_rows, seed=11, epochs=config.train_epochs), out)
    return out


def phase_adfilter(work: Path, config: AdfilterConfig, progress: bool = True) -> dict:
    _say(f"adfilter: training a small model ({config.train_rows} rows), cached in {work}", progress)
    model_dir = trained_model(work, config)
    repo = work / "repos" / "adfilter"
    build_triton_model(model_dir, repo, TritonSettings())
    offline = []
    runs = []
    with make_server(repo, work / "logs", "adfilter") as server:
        server.load(MODEL_NAME)
        for round_ in range(config.rounds):
            _say(f"adfilter: round {round_ + 1}/{config.rounds}: in-process scorer, then Triton at "
                 f"{list(config.concurrency)} in flight", progress)
            offline.append(run_benchmark(model_dir, min(config.requests, 5000), config.seed + round_))
            for concurrency in config.concurrency:
                run = run_triton_benchmark(server.grpc_url, config.requests, config.seed + round_, concurrency)
                runs.append({"round": round_, **run})
    levels = {}
    for concurrency in config.concurrency:
        mine = [r for r in runs if r["concurrency"] == concurrency]
        levels[concurrency] = {"rps": _median(r["requests_per_s"] for r in mine),
                               "p50_ms": _median(r["latency_ms_p50"] for r in mine),
                               "p99_ms": _median(r["latency_ms_p99"] for r in mine)}
    saturation = max(levels, key=lambda c: levels[c]["rps"])
    within = [c for c in levels if levels[c]["p99_ms"] <= config.p99_budget_ms]
    best_within = max(within, key=lambda c: levels[c]["rps"]) if within else None
    offline_rps = _median(o["scorer_requests_per_s"] for o in offline)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    return {
        "train_rows": config.train_rows, "requests_per_run": config.requests, "rounds": config.rounds,
        "p99_budget_ms": config.p99_budget_ms, "threshold": metadata.get("threshold"),
        "runs": runs, "offline": offline, "levels": {str(k): v for k, v in levels.items()},
        "summary": {
            "saturation_concurrency": saturation, "rps": levels[saturation]["rps"],
            "p50_ms": levels[saturation]["p50_ms"], "p99_ms": levels[saturation]["p99_ms"],
            "rps_within_budget": levels[best_within]["rps"] if best_within else 0,
            "concurrency_within_budget": best_within,
            "offline_scorer_rps": offline_rps,
            "featurize_us": _median(o["featurize_us_per_request"] for o in offline),
            "ratio_triton_over_offline_rps": levels[saturation]["rps"] / offline_rps,
            "ratio_p99_over_budget": levels[saturation]["p99_ms"] / config.p99_budget_ms,
        },
    }
