"""Packs vs the seeds' design on the same `mixed` models: one model-server process per model.

The design this project started from (its "seeds") served each user model from its own FastAPI/uvicorn
model-server process. This benchmark puts that design and the packs side by side on the same models,
cores, client and protocol, up to the same memory:

1. **Density.** The packs serve all N models of a `mixed` zoo (90 % tiny, 8 % bert-mini, ...) from one
   tritonserver, every member resident (the residency budget is set to hold them all), every model answered
   once; their process tree's PSS is the memory budget. The seeds' design then starts one
   ``python -m benchmarks.fastapi_baseline --only MODEL --workers 1`` process per model, in the manifest's
   order, answering each once, until the seed processes' PSS reaches that budget (or a process cap that
   protects a shared machine; the report says which stopped it). Result: models servable per GiB, each.
2. **Latency at equal rps.** Both serve the K models the seeds could fit; the same aiohttp client sends
   HTTP/JSON to both (Triton's KServe v2 JSON endpoint with the member as a parameter; the seed process's
   ``POST /predictions/{model}``) as an open loop at fixed rates over the same Zipf(s) sequence,
   contenders alternating and the first one rotating between rounds; p50/p99 and failures per rate, medians
   of rounds. The packs also run over all N models at the same rates (what they serve in that memory).

Run: ``python -m benchmarks.seeds_baseline`` (full, ~10-14 min on 2 shared cores) or ``--quick``;
writes ``results/seeds/seeds.json`` and ``docs/benchmarks-seeds.md``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import requests

from benchmarks.common import _display, _median, _say, environment
from benchmarks.driver import zipf_order
from benchmarks.peers import FastAPIServer, HttpSender, _each_once, triton_http_requests
from benchmarks.serving import Target, build, load_models, make_server, sample_memory, targets_for, tree_memory
from loadtest.raw_driver import DriverResult, open_loop
from model_repository import profiles
from model_repository.generator import generate_profile
from model_repository.manifest import Manifest
from model_repository.triton_config import PackSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "results" / "seeds"
DEFAULT_DOCS = REPO_ROOT / "docs" / "benchmarks-seeds.md"
GIB = 2**30


@dataclass(frozen=True)
class SeedsConfig:
    models: int = 100  # mixed: 90 tiny, 8 bert-mini, 1 bert-small, 1 resnet50 (~0.5 GiB of artifacts)
    profile: str = "mixed"
    pack_size: int = 100
    rates: tuple[float, ...] = (20.0, 100.0)
    seconds: float = 15.0
    rounds: int = 2
    zipf_s: float = 1.1
    max_processes: int = 40  # the seeds' side never starts more processes than this (shared machine)
    max_in_flight: int = 64
    timeout_s: float = 60.0
    seed: int = 0


FULL = SeedsConfig()
QUICK = SeedsConfig(models=12, rates=(20.0,), seconds=3.0, rounds=1, max_processes=4)


def ensure_models(work: Path, config: SeedsConfig, progress: bool) -> Path:
    """The zoo in work/models-PROFILE-seedN, reused when a previous run left it complete."""
    directory = work / f"models-{config.profile}-seed{config.seed}"
    with contextlib.suppress(OSError, ValueError):
        manifest = Manifest.read(directory)
        if len(manifest.models) == config.models and all((directory / m.file).exists() for m in manifest.models):
            return directory
    shutil.rmtree(directory, ignore_errors=True)
    _say(f"seeds: generating {config.models} {config.profile} models", progress)
    generate_profile(directory, config.models, config.profile, seed=config.seed)
    return directory


def _answer_each(sender_factory, count: int) -> int:
    async def go() -> int:
        sender = sender_factory()
        try:
            return await _each_once(sender, count, 4)
        finally:
            await sender.close()

    return asyncio.run(go())


def seed_requests(servers: dict[str, FastAPIServer], targets: dict[str, Target], ids: Sequence[str]
                  ) -> tuple[list[str], list[bytes]]:
    """Each model's own process: ``POST /predictions/{model}`` with the same tensor as the packs get."""
    urls = [f"{servers[i].url}/predictions/{i}" for i in ids]
    bodies = [json.dumps({"inputs": targets[i].array.tolist()}).encode() for i in ids]
    return urls, bodies


def start_seed_processes(models_dir: Path, entries: Sequence, targets: dict[str, Target], budget_pss: float,
                         config: SeedsConfig, logs: Path, stack: contextlib.ExitStack, progress: bool
                         ) -> tuple[dict, dict]:
    """One process per model in manifest order until their PSS reaches `budget_pss` or the cap."""
    servers: dict[str, FastAPIServer] = {}
    stopped_by, pss = "all models started", 0.0
    for entry in entries:
        if len(servers) >= config.max_processes:
            stopped_by = f"process cap ({config.max_processes})"
            break
        server = FastAPIServer(models_dir, logs / f"seed-{entry.id}.log", workers=1, only=entry.id)
        stack.enter_context(server)
        body = json.dumps({"inputs": targets[entry.id].array.tolist()})
        answer = requests.post(f"{server.url}/predictions/{entry.id}", data=body, timeout=config.timeout_s,
                               headers={"Content-Type": "application/json"})  # as the packs: answered once
        if answer.status_code != 200:
            raise RuntimeError(f"seed process for {entry.id}: HTTP {answer.status_code} {answer.text[:200]}")
        total = sum(tree_memory(s.process.pid)["pss"] for s in [*servers.values(), server])
        if total > budget_pss:
            server.stop()
            stopped_by = "memory budget (the packs' PSS)"
            break
        servers[entry.id], pss = server, total
        _say(f"seeds: {len(servers)} processes, {pss / 2**20:,.0f} MiB PSS "
             f"(budget {budget_pss / 2**20:,.0f} MiB)", progress)
    return servers, {"processes": len(servers), "pss": pss, "stopped_by": stopped_by}


def _run(urls: list[str], bodies: list[bytes], order: Sequence[int], rate: float, config: SeedsConfig
         ) -> DriverResult:
    async def go() -> DriverResult:
        sender = HttpSender(urls, bodies, config.max_in_flight, config.timeout_s)
        sender.order = itertools.cycle(order)
        try:
            return await open_loop(sender, rate, config.seconds, config.max_in_flight)
        finally:
            await sender.close()

    return asyncio.run(go())


def _record(name: str, result: DriverResult, rate: float, round_: int, models: int) -> dict:
    return {"contender": name, "rate": rate, "round": round_, "models": models, "rps": result.rps,
            "completed": result.successes, "failures": result.failures, "late_starts": result.late_starts,
            "p50_ms": result.percentile_ms(50), "p99_ms": result.percentile_ms(99),
            "errors": result.summary()["errors"]}


def run(work: Path, config: SeedsConfig, progress: bool = True) -> dict:
    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    models_dir = ensure_models(work, config, progress)
    manifest = Manifest.read(models_dir)
    artifact_bytes = sum(m.bytes for m in manifest.models)
    logs = work / "logs"
    # Every member resident: the budget holds all artifacts twice (a member costs ~2x its bytes, NOTES).
    settings = PackSettings(max_resident_bytes=max(PackSettings().max_resident_bytes, 2 * artifact_bytes))
    plans = build(models_dir, work / "repos" / "seeds-packs", config.pack_size, settings=settings)
    targets = {t.member or t.model: t for t in targets_for(plans, models_dir, config.seed)}
    ids = [m.id for m in manifest.models]
    with contextlib.ExitStack() as stack:
        packs = stack.enter_context(make_server(work / "repos" / "seeds-packs", logs, "seeds-packs"))
        load_s = load_models(packs, [p.name for p in plans], 4, "seeds: load packs", progress)
        all_urls, all_bodies = triton_http_requests(packs.http_url, [targets[i] for i in ids])
        _say(f"seeds: answering each of the {len(ids)} models once on the packs", progress)
        failures = _answer_each(lambda: HttpSender(all_urls, all_bodies, 4, config.timeout_s), len(ids))
        if failures:
            raise RuntimeError(f"packs: {failures} of {len(ids)} first requests failed; see {logs}")
        packs_memory = sample_memory(packs)
        seeds, seeds_memory = start_seed_processes(models_dir, manifest.models, targets, packs_memory["pss"], config,
                                                   logs, stack, progress)
        common = [i for i in ids if i in seeds]
        if not common:
            raise RuntimeError("not one seed process fits in the packs' memory; nothing to compare")
        seed_urls, seed_bodies = seed_requests(seeds, targets, common)
        common_urls, common_bodies = triton_http_requests(packs.http_url, [targets[i] for i in common])
        contenders = {"packs": (common_urls, common_bodies, len(common)),
                      "seeds": (seed_urls, seed_bodies, len(common)),
                      "packs_all_models": (all_urls, all_bodies, len(ids))}
        runs = []
        names = list(contenders)
        for round_ in range(config.rounds):
            for rate in config.rates:
                rotated = names[round_ % len(names):] + names[:round_ % len(names)]
                for name in rotated:
                    urls, bodies, count = contenders[name]
                    order = zipf_order(count, config.zipf_s, 200_000, config.seed,
                                       config.seed + 1000 + round_).tolist()
                    _say(f"seeds: round {round_ + 1}/{config.rounds}, {rate:g} rps: {name} ({count} models)",
                         progress)
                    runs.append(_record(name, _run(urls, bodies, order, rate, config), rate, round_, count))
    summary = {}
    for name in names:
        for rate in config.rates:
            mine = [r for r in runs if r["contender"] == name and r["rate"] == rate]
            summary[f"{name}@{rate:g}"] = {
                "contender": name, "rate": rate, "models": mine[0]["models"],
                "rps": _median(r["rps"] for r in mine), "p50_ms": _median(r["p50_ms"] for r in mine),
                "p99_ms": _median(r["p99_ms"] for r in mine), "failures": sum(r["failures"] for r in mine)}
    density = {
        "packs": {"models": len(ids), "pss": packs_memory["pss"], "processes": int(packs_memory["processes"]),
                  "models_per_gib": len(ids) / (packs_memory["pss"] / GIB), "load_s": load_s},
        "seeds": {"models": seeds_memory["processes"], "pss": seeds_memory["pss"],
                  "processes": seeds_memory["processes"], "stopped_by": seeds_memory["stopped_by"],
                  "models_per_gib": seeds_memory["processes"] / (seeds_memory["pss"] / GIB)},
    }
    ratios = {"models_per_gib": density["packs"]["models_per_gib"] / density["seeds"]["models_per_gib"]}
    for rate in config.rates:
        seeds_p99 = summary[f"seeds@{rate:g}"]["p99_ms"]
        ratios[f"packs_over_seeds_p99@{rate:g}"] = summary[f"packs@{rate:g}"]["p99_ms"] / seeds_p99
        ratios[f"packs_all_over_seeds_p99@{rate:g}"] = summary[f"packs_all_models@{rate:g}"]["p99_ms"] / seeds_p99
    kinds = {}
    for m in manifest.models:
        kind = m.id.rsplit("-", 1)[0] if m.architecture in ("bert", "resnet") else "tiny"
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"config": asdict(config), "environment": environment(), "models": len(ids), "kinds": kinds,
            "artifact_bytes": artifact_bytes, "seed_models": common, "density": density, "runs": runs,
            "summary": summary, "ratios": ratios, "seconds": time.perf_counter() - started,
            "load_average": [load_at_start, os.getloadavg()[0]],
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def observations(results: dict) -> list[str]:
    """What the numbers say, computed from them (never typed in)."""
    d, lines = results["density"], []
    per_seed = d["seeds"]["pss"] / max(d["seeds"]["processes"], 1)
    lines.append(f"A seed process costs {per_seed / 2**20:,.0f} MiB PSS on average (Python, torch, uvicorn and "
                 f"one model); the packs cost {d['packs']['pss'] / d['packs']['models'] / 2**20:,.1f} MiB per model "
                 f"with every member resident, real-size members included. Serving all {d['packs']['models']} "
                 f"models one process each would take about {d['packs']['models'] * per_seed / GIB:,.1f} GiB "
                 "(extrapolated from that average, not run).")
    for s in results["summary"].values():
        if s["rps"] < 0.95 * s["rate"]:
            lines.append(f"{s['contender']} at {s['rate']:g} rps reached only {s['rps']:,.1f} rps over its "
                         f"{s['models']} models: the offered load exceeds what the shared cores serve for that mix "
                         "(open loop: late starts and queueing inflate its p99), so its latency there is a "
                         "saturation figure, not a like-for-like one.")
    for rate in results["config"]["rates"]:
        ratio = results["ratios"][f"packs_over_seeds_p99@{rate:g}"]
        verdict = "lower" if ratio < 1 else "higher"
        lines.append(f"At {rate:g} rps over the same {d['seeds']['models']} models the packs' p99 is {ratio:.2f}x "
                     f"the seeds' ({verdict}).")
    return lines


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def report(results: dict) -> str:
    d, cfg = results["density"], results["config"]
    env = results["environment"]
    rows = ["| contender | models | rate (rps) | achieved rps | p50 ms | p99 ms | failures |",
            "|---|---|---|---|---|---|---|"]
    for s in results["summary"].values():
        rows.append(f"| {s['contender']} | {s['models']} | {s['rate']:g} | {s['rps']:,.1f} | {s['p50_ms']:.2f} | "
                    f"{s['p99_ms']:.2f} | {s['failures']} |")
    runs = ["| round | rate | contender | models | rps | p50 ms | p99 ms | failures | late starts |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        runs.append(f"| {r['round'] + 1} | {r['rate']:g} | {r['contender']} | {r['models']} | {r['rps']:,.1f} | "
                    f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['failures']} | {r['late_starts']} |")
    density_rows = "\n".join(
        f"| {name} | {d[name]['models']} | {int(d[name]['processes'])} | {_mib(d[name]['pss'])} | "
        f"{d[name]['models_per_gib']:,.1f} | {d[name].get('stopped_by', 'all models resident')} |"
        for name in ("packs", "seeds"))
    seed_models = "`, `".join(results["seed_models"])
    ratio_lines = "\n".join(f"| {k} | {v:.2f}x |" for k, v in results["ratios"].items())
    notes = "\n".join(f"- {line}" for line in observations(results))
    return f"""# Packs vs the seeds' design: one model-server process per model

Generated by `python -m benchmarks.seeds_baseline` on {results['date']} in {results['seconds'] / 60:.1f} minutes;
every number below comes from that one run (raw results: `results/seeds/seeds.json`, git-ignored).
Machine: {env['cpu_model']}, {env['logical_cpus']} logical cores, {env['ram_gib']:.1f} GiB, shared with other
jobs (load average {results['load_average'][0]:.1f} at start, {results['load_average'][1]:.1f} at the end); client and
servers share the cores. torch {env['versions']['torch']}, tritonserver from nvidia-pytriton
{env['versions']['nvidia-pytriton']}.

## What is compared

- **packs**: one tritonserver (Python backend) with the `{cfg['profile']}` zoo of {results['models']} models
  ({', '.join(f'{v} {k}' for k, v in sorted(results['kinds'].items()))}; {_mib(results['artifact_bytes'])} of
  artifacts) in packs of up to {cfg['pack_size']} members by architecture, every member resident.
- **seeds**: the design the project started from: one `uvicorn` + FastAPI process per model
  (`benchmarks.fastapi_baseline --only MODEL --workers 1`: the model loaded at start, synchronous torch on
  one thread in an `async` handler), started in manifest order until their memory reached the packs'.
- Same client and protocol for both: one aiohttp session, HTTP/JSON bodies serialised once per model
  (Triton's KServe v2 JSON with the member as the `model_id` parameter; `POST /predictions/MODEL` with
  `{{"inputs": ...}}` for the seeds), open loop at fixed rates, Zipf s={cfg['zipf_s']} over the models,
  {cfg['rounds']} rounds of {cfg['seconds']:g} s per contender and rate, contenders alternating; medians.

## Density: models servable per GiB (PSS, every model answered once)

| design | models servable | processes | PSS | models per GiB | stopped by |
|---|---|---|---|---|---|
{density_rows}

Packs serve **{results['ratios']['models_per_gib']:.1f}x** the models per GiB. The seeds fit
{d['seeds']['models']} of the {results['models']} models (`{seed_models}`) in the memory the packs
use for all of them.

## Latency at equal rps (the {d['seeds']['models']} models both serve; packs also over all {results['models']})

{chr(10).join(rows)}

| ratio (packs / seeds, same run) | value |
|---|---|
{ratio_lines}

{notes}

Runs in the order they ran:

{chr(10).join(runs)}
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 models, one short rate (a harness check)")
    parser.add_argument("--models", type=int, default=None, help="zoo size (default: 100 full, 12 quick)")
    parser.add_argument("--profile", default=None, choices=profiles.PROFILES)
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "build" / "seeds-bench")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--render", type=Path, default=None, metavar="SEEDS_JSON",
                        help="only rewrite the report from a saved results file")
    args = parser.parse_args(argv)
    if args.render:
        args.docs.write_text(report(json.loads(args.render.read_text())))
        _say(f"wrote {_display(args.docs)}")
        return 0
    config = QUICK if args.quick else FULL
    if args.models:
        config = replace(config, models=args.models)
    if args.profile:
        config = replace(config, profile=args.profile)
    results = run(args.work, config)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seeds.json").write_text(json.dumps(results, indent=1, default=str))
    text = report(results)
    if not args.no_docs:
        args.docs.write_text(text)
        _say(f"wrote {_display(args.docs)}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
