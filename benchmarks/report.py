"""Turns one suite run's results into goals, Markdown tables, plots and docs/benchmarks.md.

Why a module of its own: every claim in the report must be computed from the numbers of that run, never
typed in. ``goals()`` states each goal once (its threshold and where its number comes from) and decides
"met" / "not met" from the results; the tables and the document only format what is in the results.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import _markdown

MET, NOT_MET, NOT_RUN, INFO = "met", "not met", "not run", "-"


@dataclass(frozen=True)
class Goal:
    """One goal of issue 7: which section it needs, and how to read its measured value and verdict."""

    id: str
    text: str
    section: str
    evaluate: Callable[[dict], dict]  # results -> {"measured", "baseline", "ratio", "met"} (met: bool|None)


def _f(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _peers_goal(contender: str) -> Callable[[dict], dict]:
    def evaluate(results: dict) -> dict:
        peers = results["peers"]
        packs, fastapi = peers["summary"][contender], peers["summary"]["fastapi_http"]
        rps_ratio = peers["ratios"][f"{contender}_over_fastapi_rps"]
        p99_ratio = peers["ratios"][f"{contender}_over_fastapi_p99"]
        return {"measured": f"{_f(packs['rps'], 0)} rps, p99 {_f(packs['p99_ms'], 2)} ms",
                "baseline": f"FastAPI {_f(fastapi['rps'], 0)} rps, p99 {_f(fastapi['p99_ms'], 2)} ms",
                "ratio": f"{_f(rps_ratio, 2)}x rps, p99 {_f(p99_ratio, 2)}x",
                "met": rps_ratio >= 3.0 and p99_ratio <= 1.0}
    return evaluate


def _budget_goal(results: dict) -> dict:
    peers = results["peers"]
    packs, fastapi = peers["summary"]["packs_grpc"], peers["summary"]["fastapi_http"]
    ratio = peers["ratios"]["packs_grpc_over_fastapi_rps_at_budget"]
    return {"measured": f"{_f(packs['rps_at_p99_budget'], 0)} rps (at {packs['concurrency_at_p99_budget']} in flight)",
            "baseline": f"FastAPI {_f(fastapi['rps_at_p99_budget'], 0)} rps (at "
                        f"{fastapi['concurrency_at_p99_budget']} in flight)",
            "ratio": f"{_f(ratio, 2)}x", "met": ratio >= 3.0}


def _floor_goal(results: dict) -> dict:
    peers = results["peers"]
    packs, floor = peers["summary"]["packs_grpc"], peers["summary"]["floor_grpc"]
    ratio = peers["ratios"]["packs_grpc_over_floor_rps"]
    return {"measured": f"packs {_f(packs['rps'], 0)} rps", "baseline": f"no-op floor {_f(floor['rps'], 0)} rps",
            "ratio": f"{ratio:.0%} of the floor", "met": ratio >= 0.8}


def _density_goal(results: dict) -> dict:
    memory = results["data_plane"]["memory"]["summary"]
    ratio = memory["ratio_models_per_gib"]
    return {"measured": f"{_f(memory['packs']['models_per_gib'], 0)} models/GiB "
                        f"({_f(memory['packs']['pss_mb_per_model'], 2)} MB each)",
            "baseline": f"dedicated {_f(memory['dedicated']['models_per_gib'], 1)} models/GiB "
                        f"({_f(memory['dedicated']['pss_mb_per_model'], 0)} MB each)",
            "ratio": f"{_f(ratio, 0)}x", "met": ratio >= 60.0}


def _servable_goal(results: dict) -> dict:
    servable = results["data_plane"]["servable"]
    seconds, models = servable["summary"]["all_answered_s"], servable["models"]
    summary = servable["summary"]
    met = seconds <= 60.0 if models >= 1000 else None
    return {"measured": f"{models} models servable (every one answered) in {_f(seconds)} s",
            "baseline": f"dedicated, extrapolated: {_f(summary['dedicated_extrapolated_load_s'], 0)} s",
            "ratio": f"{_f(seconds / 60.0, 2)}x the 60 s budget"
                     + ("" if models >= 1000 else f" (only {models} models: goal needs 1,000)"),
            "met": met}


def _cold_goal(results: dict) -> dict:
    latency = results["data_plane"]["latency"]
    p99 = latency["cold"]["p99_ms"]
    return {"measured": f"cold p50 / p99 {_f(latency['cold']['p50_ms'], 2)} / {_f(p99, 2)} ms "
                        f"({latency['members']} members)",
            "baseline": f"warm p99 {_f(latency['warm']['p99_ms'], 2)} ms",
            "ratio": f"{_f(p99 / 50.0, 2)}x the 50 ms budget", "met": p99 <= 50.0}


def _adfilter_goal(results: dict) -> dict:
    summary = results["adfilter"]["summary"]
    return {"measured": f"{_f(summary['rps'], 0)} rps, p99 {_f(summary['p99_ms'], 2)} ms at saturation "
                        f"({summary['saturation_concurrency']} in flight)",
            "baseline": f"in-process scorer {_f(summary['offline_scorer_rps'], 0)} rps (1 thread)",
            "ratio": f"p99 {_f(summary['ratio_p99_over_budget'], 2)}x the 10 ms budget; "
                     f"{_f(summary['ratio_triton_over_offline_rps'], 2)}x the scorer's rate",
            "met": summary["p99_ms"] <= 10.0}


def _loadgen_info(results: dict) -> dict:
    summary = results["loadgen"]["summary"]
    return {"measured": f"locust {_f(summary['locust']['rps'], 0)} rps",
            "baseline": f"raw asyncio {_f(summary['raw_asyncio']['rps'], 0)} rps",
            "ratio": f"{_f(summary['ratio_locust_over_raw_rps'], 2)}x", "met": None}


def _gpu_goal(results: dict) -> dict:
    gpu = results["gpu"]
    if gpu.get("skipped"):
        return {"measured": "-", "baseline": "-", "ratio": "-", "met": None, "status": NOT_RUN}
    ratios = gpu["ratios"]
    return {"measured": f"packs {_f(gpu['summary']['packs_grpc']['rps'], 0)} rps",
            "baseline": f"raw batched torch {_f(gpu['summary']['torch_batched']['rps'], 0)} rps",
            "ratio": f"{_f(ratios.get('packs_grpc_over_torch_batched_rps'), 2)}x of the limit; "
                     f"{_f(ratios.get('packs_grpc_over_fastapi_rps'), 2)}x FastAPI on GPU",
            "met": None}


GOALS: tuple[Goal, ...] = (
    Goal("1a", "packs >= 3x the FastAPI server's rps at no worse p99 (packs via gRPC, FastAPI via HTTP/JSON)", "peers",
         _peers_goal("packs_grpc")),
    Goal("1b", "same, apples to apples: both over HTTP/JSON with the same aiohttp client", "peers",
         _peers_goal("packs_http")),
    Goal("1c", "packs >= 3x FastAPI's best rps within the p99 budget (concurrency sweep)", "peers", _budget_goal),
    Goal("2", "packs >= 80% of the no-op Triton floor's rps (same request shape)", "peers", _floor_goal),
    Goal("3a", ">= 60x models per GiB vs one Triton model per user model", "data_plane", _density_goal),
    Goal("3b", "1,000 models servable from an empty server in <= 60 s", "data_plane", _servable_goal),
    Goal("4", "first request to a non-resident model: p99 <= 50 ms", "data_plane", _cold_goal),
    Goal("5", "locust gRPC user vs raw asyncio driver, same server (no goal; sizes locust's reach)", "loadgen",
         _loadgen_info),
    Goal("6", "ad filter, raw OpenRTB JSON -> decision: p99 <= 10 ms at saturation", "adfilter", _adfilter_goal),
    Goal("7", "GPU: packs on CUDA vs raw batched torch vs FastAPI on the same GPU", "gpu", _gpu_goal),
)


def goals(results: dict) -> list[dict]:
    """Every goal with its measured value, baseline, ratio and status, computed from `results`."""
    rows = []
    for goal in GOALS:
        section = results.get(goal.section)
        if not section:
            rows.append({"id": goal.id, "goal": goal.text, "measured": "-", "baseline": "-", "ratio": "-",
                         "met": None, "status": NOT_RUN})
            continue
        row = {"id": goal.id, "goal": goal.text, **goal.evaluate(results)}
        if "status" not in row:
            row["status"] = INFO if row["met"] is None else (MET if row["met"] else NOT_MET)
            if row["met"] is None and goal.section == "data_plane":
                row["status"] = "not evaluated"
        rows.append(row)
    return rows


def goals_table(rows: Sequence[dict]) -> str:
    table = [("#", "goal", "measured", "baseline (same run)", "ratio", "status")]
    table += [(r["id"], r["goal"], r["measured"], r["baseline"], r["ratio"], f"**{r['status']}**"
               if r["status"] in (MET, NOT_MET) else r["status"]) for r in rows]
    return _markdown(table)


def peers_table(peers: dict) -> str:
    rows = [("contender", "protocol (client)", "server", "rps", "p50 ms", "p99 ms",
             f"best rps with p99 <= {_f(peers['p99_budget_ms'], 0)} ms", "server cores", "client cores",
             "server CPU us/req", "client CPU us/req", "failures")]
    for name, s in peers["summary"].items():
        at = s["concurrency_at_p99_budget"]
        rows.append((name, s["protocol"], s["server"], _f(s["rps"], 0), _f(s["p50_ms"], 2), _f(s["p99_ms"], 2),
                     f"{_f(s['rps_at_p99_budget'], 0)} ({at} in flight)" if at else "none within budget",
                     _f(s["server_cores"], 2), _f(s["client_cores"], 2), _f(s["server_cpu_us_per_request"], 0),
                     _f(s["client_cpu_us_per_request"], 0), str(s["failures"])))
    return _markdown(rows)


def runs_table(runs: Sequence[dict]) -> str:
    rows = [("run", "contender", "in flight", "rps", "p50 ms", "p99 ms", "server cores", "client cores",
             "machine busy", "failures")]
    for k, r in enumerate(runs, 1):
        rows.append((str(k), r["contender"], str(r["concurrency"]), _f(r["rps"], 0), _f(r["p50_ms"], 2),
                     _f(r["p99_ms"], 2), _f(r["cpu"]["server_cores"], 2), _f(r["cpu"]["client_cores"], 2),
                     f"{r['cpu']['machine_busy']:.0%}", str(r["failures"])))
    return _markdown(rows)


def loadgen_table(loadgen: dict) -> str:
    rows = [("run", "generator", "requests", "failures", "rps", "p50 ms", "p99 ms")]
    for k, r in enumerate(loadgen["runs"], 1):
        rows.append((str(k), r["generator"], str(r["requests"]), str(r["failures"]), _f(r["rps"], 0),
                     _f(r["p50_ms"], 2), _f(r["p99_ms"], 2)))
    return _markdown(rows)


def adfilter_table(adfilter: dict) -> str:
    rows = [("in flight", "rps", "p50 ms", "p99 ms", f"p99 <= {_f(adfilter['p99_budget_ms'], 0)} ms")]
    for concurrency, level in adfilter["levels"].items():
        rows.append((concurrency, _f(level["rps"], 0), _f(level["p50_ms"], 2), _f(level["p99_ms"], 2),
                     "yes" if level["p99_ms"] <= adfilter["p99_budget_ms"] else "no"))
    return _markdown(rows)


def plot(results: dict, path: Path) -> Path | None:
    """One small PNG: median rps per contender (p99 on the bars) and the concurrency sweep (rps vs p99)."""
    peers = results.get("peers")
    if not peers:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=80)
    names = list(peers["summary"])
    rps = [peers["summary"][n]["rps"] for n in names]
    bars = left.bar(names, rps, color=["#2a6f97", "#999999", "#61a5c2", "#c75146"][:len(names)])
    for bar, name in zip(bars, names, strict=True):
        left.annotate(f"p99 {peers['summary'][name]['p99_ms']:.1f} ms", (bar.get_x() + bar.get_width() / 2,
                      bar.get_height()), ha="center", va="bottom", fontsize=8)
    left.set_ylabel("requests/s (median of rounds)")
    left.set_title(f"{peers['models']} models, Zipf s={peers['zipf_s']}, {peers['concurrency']} in flight",
                   fontsize=9)
    left.tick_params(axis="x", labelsize=8)
    for name in names:
        points = sorted((r["concurrency"], r["rps"], r["p99_ms"]) for r in peers["sweep"] if r["contender"] == name)
        if points:
            right.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=name)
            for concurrency, x, y in points:
                right.annotate(str(concurrency), (x, y), fontsize=7, xytext=(2, 2), textcoords="offset points")
    right.axhline(peers["p99_budget_ms"], color="black", linestyle=":", linewidth=1)
    right.set_xlabel("requests/s")
    right.set_ylabel("p99 ms")
    right.set_yscale("log")
    right.set_title("concurrency sweep (labels: requests in flight)", fontsize=9)
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def observations(results: dict) -> list[str]:
    """Where the time goes, in sentences derived only from this run's numbers."""
    lines = []
    peers = results.get("peers")
    if peers:
        s = peers["summary"]
        cpu = {name: summary["server_cpu_us_per_request"] for name, summary in s.items()}
        client = {name: summary["client_cpu_us_per_request"] for name, summary in s.items()}
        cores = results["environment"]["logical_cpus"]
        if "packs_grpc" in cpu and "floor_grpc" in cpu:
            lines.append(
                f"- Server CPU per answer: the no-op floor (Triton, gRPC, the stub's IPC, no model) costs "
                f"{cpu['floor_grpc']:.0f} us; the packs cost {cpu['packs_grpc']:.0f} us, so the pack runtime "
                f"(routing, checks, batching by member) and the members' torch forward passes add "
                f"{cpu['packs_grpc'] - cpu['floor_grpc']:.0f} us.")
        if "packs_grpc" in cpu and "fastapi_http" in cpu and "packs_grpc" in client and "fastapi_http" in client:
            # Capacity if the machine did nothing else: every answer costs server + client CPU on shared
            # cores; each uvicorn worker (one event loop, torch on one thread) uses at most one core.
            workers = min(cores, (peers.get("fastapi") or {}).get("workers", 1))
            packs_max = cores * 1e6 / (cpu["packs_grpc"] + client["packs_grpc"])
            fastapi_max = min(workers * 1e6 / cpu["fastapi_http"],
                              cores * 1e6 / (cpu["fastapi_http"] + client["fastapi_http"]))
            lines.append(
                f"- The FastAPI server costs {cpu['fastapi_http']:.0f} us of CPU per answer "
                f"({cpu['fastapi_http'] / cpu['packs_grpc']:.2f}x the packs' {cpu['packs_grpc']:.0f} us) and, "
                f"with {workers} worker(s), can use at most {workers} core(s). From these CPU costs alone, on "
                f"{cores} cores shared with the client, the packs could serve at most about {packs_max:,.0f} rps "
                f"and the FastAPI server {fastapi_max:,.0f} rps: a ceiling of {packs_max / fastapi_max:.2f}x for "
                "the packs' advantage on this machine, before any noise from other tenants.")
        limit = peers.get("torch_limit")
        if limit:
            torch_us = limit["us_per_request"]
            extra = ", ".join(f"{name} {cpu[name] - torch_us:.0f} us" for name in cpu)
            lines.append(
                f"- Bare torch, in-process on one thread, runs the same sequence at {limit['rps']:,.0f} requests/s "
                f"({torch_us:.0f} us per forward pass): the limit on one core. Server CPU per answer beyond that "
                f"forward pass: {extra}.")
        runtime = peers.get("pack_runtime")
        if runtime and "packs_grpc" in cpu and "floor_grpc" in cpu:
            rest = cpu["packs_grpc"] - cpu["floor_grpc"] - runtime["execute_us_per_request"]
            lines.append(
                f"- The pack runtime alone (the real model.py's execute() in this process, batch 1, no Triton): "
                f"{runtime['execute_us_per_request']:.0f} us per request, of which the members' torch forward "
                f"passes {runtime['forward_us_per_request']:.0f} us and routing/checks/responses "
                f"{runtime['routing_us_per_request']:.0f} us. So of the packs' {cpu['packs_grpc']:.0f} us of server "
                f"CPU per answer: Triton + gRPC + stub IPC (the floor) {cpu['floor_grpc']:.0f} us, execute() "
                f"{runtime['execute_us_per_request']:.0f} us, and {rest:.0f} us that neither explains (work in "
                "the stub and server around a real model that a no-op does not cause, and noise).")
        if client:
            lines.append("- Client CPU per request: " + ", ".join(f"{name} {value:.0f} us"
                                                                 for name, value in client.items())
                         + " (one asyncio process; the client shares the server's cores).")
    data_plane = results.get("data_plane")
    if data_plane:
        runs = [r for r in data_plane["zipf"]["runs"] if r["config"] == "batching"]
        if runs:
            server = runs[0]["server"]
            lines.append(
                f"- Inside Triton (data-plane Zipf run with dynamic batching, per request): queue "
                f"{server['queue_us']:.0f} us, compute input {server['compute_input_us']:.0f} us, execute "
                f"{server['compute_infer_us']:.0f} us (of which the member's torch forward pass "
                f"{server['torch_forward_us']:.0f} us), compute output {server['compute_output_us']:.0f} us; "
                f"the client saw p50 {runs[0]['p50_ms']:.2f} ms.")
    loadgen = results.get("loadgen")
    if loadgen:
        ratio = loadgen["summary"]["ratio_locust_over_raw_rps"]
        lines.append(f"- Locust offered {ratio:.0%} of the raw asyncio driver's rate against the same server: "
                     + ("size capacity tests with the raw driver or more locust processes." if ratio < 0.8
                        else "locust is close enough to the ceiling for capacity tests."))
    return lines
