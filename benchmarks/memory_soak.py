"""Memory over time: does tritonserver with packs stay bounded across many loads and unloads?

Serving stacks leak in two known places: a server that grows a little on every model load/unload (the
repository API churns whole stub processes), and a long-lived Python process that grows on every member
load/evict (torch modules, metric label sets, allocator fragmentation). This soak drives both on the real
tritonserver and samples memory along the way, so the curve shows whether it levels off:

1. **member churn**: packs loaded with an LRU budget so small that every request loads a member and evicts
   another; one request per pack per cycle, round-robin over every member; PSS of tritonserver plus its
   stubs sampled every few cycles;
2. **pack churn**: unload and reload one pack per cycle (rotating over the packs; each load starts a new
   stub process that imports torch) and send it two requests; tritonserver's own PSS (the long-lived
   process) and the whole tree sampled every few cycles.

"Bounded" is judged from the curve, not a single pair of points: the growth between the median of the
first and the last tenth of the samples, per cycle. Run: ``python -m benchmarks.memory_soak [--quick]``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil
import requests

from benchmarks.common import MIB, REPO_ROOT, _progress, _say, environment
from benchmarks.driver import drive
from benchmarks.serving import build, ensure_models, make_server, metric_totals, subset, targets_for, tree_memory
from fleet.triton_server import TritonServer
from model_repository.triton_config import PackSettings

DEFAULT_OUT = REPO_ROOT / "results" / "bench-memory"
DEFAULT_DOCS = REPO_ROOT / "docs" / "benchmarks-memory.md"
JSON_NAME = "memory_soak.json"


@dataclass(frozen=True)
class SoakConfig:
    mode: str = "full"
    seed: int = 0
    models: int = 300  # in packs of pack_size, one pack per architecture per pack_size
    pack_size: int = 100
    # Each pack's residency budget is its largest member's bytes (the runtime refuses a member whose tensors
    # exceed the budget), so one member fits and, where a pack's sizes are within 2x, two never do.
    lru_bytes: int = 0  # 0: per pack, its largest member; >0: this budget for every pack
    member_cycles: int = 1000
    pack_cycles: int = 1000
    samples: int = 50  # per phase, evenly spaced


FULL = SoakConfig()
QUICK = SoakConfig(mode="quick", member_cycles=300, pack_cycles=60, samples=20)


def _sample(server: TritonServer) -> dict[str, float]:
    tree = tree_memory(server.process.pid)
    own = psutil.Process(server.process.pid).memory_full_info()
    return {"tree_pss_mb": tree["pss"] / MIB, "tree_rss_mb": tree["rss"] / MIB, "processes": tree["processes"],
            "server_pss_mb": own.pss / MIB, "server_rss_mb": own.rss / MIB}


def _every(cycles: int, samples: int) -> int:
    return max(1, cycles // max(1, samples))


def growth(points: Sequence[dict], key: str) -> dict[str, float]:
    """Growth from the first to the last tenth of the samples (medians), in MB and KB per cycle."""
    if len(points) < 2:
        return {"first_mb": float("nan"), "last_mb": float("nan"), "growth_mb": float("nan"),
                "kb_per_cycle": float("nan")}
    tenth = max(1, len(points) // 10)
    first, last = points[:tenth], points[-tenth:]
    first_mb = float(np.median([p[key] for p in first]))
    last_mb = float(np.median([p[key] for p in last]))
    span = float(np.median([p["cycle"] for p in last]) - np.median([p["cycle"] for p in first])) or 1.0
    return {"first_mb": first_mb, "last_mb": last_mb, "growth_mb": last_mb - first_mb,
            "kb_per_cycle": (last_mb - first_mb) * 1024 / span, "peak_mb": max(p[key] for p in points)}


def _indices_by_pack(targets) -> dict[str, list[int]]:
    by_pack: dict[str, list[int]] = {}
    for index, target in enumerate(targets):
        by_pack.setdefault(target.model, []).append(index)
    return by_pack


def member_churn(server: TritonServer, targets, config: SoakConfig, progress: bool) -> dict:
    by_pack = _indices_by_pack(targets)
    packs = sorted(by_pack)
    every = _every(config.member_cycles, config.samples)
    before = metric_totals(server.metrics())
    points = []
    with _progress(config.member_cycles, "member churn", progress, "cycle") as bar:
        for cycle in range(config.member_cycles):
            order = [by_pack[p][cycle % len(by_pack[p])] for p in packs]
            drive(server.grpc_url, targets, order, len(order)).require_ok("member churn")
            if cycle % every == 0 or cycle == config.member_cycles - 1:
                points.append({"cycle": cycle + 1, **_sample(server)})
            bar.update(1)
    time.sleep(1.1)  # the pack flushes member counters at most once a second, on a request
    drive(server.grpc_url, targets, [by_pack[p][0] for p in packs], len(packs)).require_ok("flush")
    after = metric_totals(server.metrics())
    return {"cycles": config.member_cycles, "requests": config.member_cycles * len(packs),
            "member_loads": after["fleet_member_loads_total"] - before["fleet_member_loads_total"],
            "member_evictions": after["fleet_member_evictions_total"] - before["fleet_member_evictions_total"],
            "points": points, "tree_pss": growth(points, "tree_pss_mb")}


def pack_churn(server: TritonServer, targets, config: SoakConfig, progress: bool) -> dict:
    by_pack = _indices_by_pack(targets)
    packs = sorted(by_pack)
    every = _every(config.pack_cycles, config.samples)
    points, reload_s = [], []
    with _progress(config.pack_cycles, "pack churn", progress, "cycle") as bar:
        for cycle in range(config.pack_cycles):
            pack = packs[cycle % len(packs)]
            started = time.perf_counter()
            server.unload(pack)
            server.load(pack)
            reload_s.append(time.perf_counter() - started)
            members = by_pack[pack]
            drive(server.grpc_url, targets, [members[cycle % len(members)], members[(cycle + 1) % len(members)]],
                  2).require_ok("pack churn")
            if cycle % every == 0 or cycle == config.pack_cycles - 1:
                points.append({"cycle": cycle + 1, **_sample(server)})
            bar.update(1)
    if server.ready_models() != set(packs):
        raise RuntimeError(f"after the churn the ready packs are {sorted(server.ready_models())}, not {packs}")
    return {"cycles": config.pack_cycles, "reload_s_p50": float(np.median(reload_s)),
            "reload_s_p99": float(np.percentile(reload_s, 99)), "points": points,
            "server_pss": growth(points, "server_pss_mb"), "tree_pss": growth(points, "tree_pss_mb")}


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    members = results["member_churn"]["points"]
    left.plot([p["cycle"] for p in members], [p["tree_pss_mb"] for p in members], marker=".")
    left.set(title="member churn: every request loads and evicts a member", xlabel="cycle",
             ylabel="PSS, tritonserver + stubs (MB)")
    packs = results["pack_churn"]["points"]
    right.plot([p["cycle"] for p in packs], [p["tree_pss_mb"] for p in packs], marker=".", label="tritonserver + stubs")
    right.plot([p["cycle"] for p in packs], [p["server_pss_mb"] for p in packs], marker=".", label="tritonserver alone")
    right.set(title="pack churn: unload + load one pack per cycle", xlabel="cycle", ylabel="PSS (MB)")
    right.legend()
    for axis in (left, right):
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _row(name: str, g: dict) -> str:
    return (f"| {name} | {g['first_mb']:.1f} | {g['last_mb']:.1f} | {g['peak_mb']:.1f} | {g['growth_mb']:+.1f} | "
            f"{g['kb_per_cycle']:+.2f} |")


def table(results: dict) -> str:
    member, pack = results["member_churn"], results["pack_churn"]
    return "\n".join([
        "| series | first tenth MB | last tenth MB | peak MB | growth MB | KB per cycle |",
        "|---|---|---|---|---|---|",
        _row(f"member churn ({member['cycles']} cycles, {member['member_loads']:.0f} member loads): "
             "tritonserver + stubs PSS", member["tree_pss"]),
        _row(f"pack churn ({pack['cycles']} unload+load cycles): tritonserver PSS", pack["server_pss"]),
        _row("pack churn: tritonserver + stubs PSS", pack["tree_pss"]),
    ])


def write_docs(results: dict, path: Path, figure: Path) -> None:
    config, env = results["config"], results["environment"]
    member, pack = results["member_churn"], results["pack_churn"]
    figure_link = figure.relative_to(path.parent) if figure.is_relative_to(path.parent) else figure
    budget_text = f"{config['lru_bytes'] // 1024} KiB" if config["lru_bytes"] else "its largest member's bytes"
    path.write_text(f"""# Memory over time: loads, unloads and member churn

Generated by `python -m benchmarks.memory_soak{' --quick' if config['mode'] == 'quick' else ''}` on
{results['date']} ({config['mode']} mode), {env['cpu_model']}, {env['logical_cpus']} cores, tritonserver
{results['tritonserver_version']}, torch {env['versions']['torch']}; wall {results['wall_s']:.0f} s. Every number
below is from that run.

{config['models']} generated models in {results['packs']} packs on the real tritonserver (default glibc malloc;
no jemalloc or tcmalloc is installed on this machine, so the allocator comparison was not run). Each pack's
LRU budget is {budget_text}, so (nearly) every member request in the first phase loads a member and
evicts another ({member['member_loads']:.0f} loads and {member['member_evictions']:.0f}
evictions counted on the metrics port). The second phase unloads and reloads one pack per cycle (a new
stub process each time; reload p50 {pack['reload_s_p50']:.2f} s, p99 {pack['reload_s_p99']:.2f} s).

{results['table']}

![memory over cycles]({figure_link})

"Growth" compares the medians of the first and the last tenth of the samples; PSS counts shared pages
(libtorch, libpython) in proportion, so it also moves a little with other processes on the machine.
""")


def _set_budget(model_dir: Path, budget: int) -> None:
    """Rewrite a built pack's max_resident_bytes in every family's config."""
    for config in [model_dir / "config.pbtxt", *sorted((model_dir / "configs").glob("*.pbtxt"))]:
        text = re.sub(r'(key: "max_resident_bytes"\s*value \{\s*string_value: )"\d+"',
                      rf'\g<1>"{budget}"', config.read_text())
        config.write_text(text)


def run(config: SoakConfig = FULL, out: Path = DEFAULT_OUT, docs: Path | None = None, progress: bool = True) -> dict:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    models_dir = ensure_models(REPO_ROOT / "results" / "bench-data-plane" / "work", config.models, config.seed,
                               progress)
    source = subset(models_dir, config.models, work / f"subset-{config.models}")
    plans = build(source, work / "repo", config.pack_size,
                  settings=PackSettings(max_resident_bytes=config.lru_bytes or 64 * 1024))
    if not config.lru_bytes:
        for plan in plans:
            _set_budget(work / "repo" / plan.name, max(m.bytes for m in plan.members))
    targets = targets_for(plans, source, config.seed)
    with make_server(work / "repo", work / "logs", "soak") as server:
        for plan in plans:
            server.load(plan.name)
        version = requests.get(f"{server.http_url}/v2", timeout=10).json().get("version", "unknown")
        _say(f"[1/2] member churn: {config.member_cycles} cycles over {len(targets)} members", progress)
        member = member_churn(server, targets, config, progress)
        _say(f"[2/2] pack churn: {config.pack_cycles} unload+load cycles", progress)
        pack = pack_churn(server, targets, config, progress)
    results = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "config": asdict(config),
               "environment": environment(), "tritonserver_version": version, "packs": len(plans),
               "member_churn": member, "pack_churn": pack, "wall_s": time.perf_counter() - started}
    results["table"] = table(results)
    (out / JSON_NAME).write_text(json.dumps(results, indent=1, default=float) + "\n")
    figure = plot(results, (docs.parent / "img" / "memory-soak.png") if docs else out / "memory-soak.png")
    results["figure"] = str(figure)
    if docs is not None:
        write_docs(results, docs, figure)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 member and 60 pack cycles (a few minutes)")
    parser.add_argument("--pack-cycles", type=int, default=None, help="override the number of pack cycles")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-docs", action="store_true", help=f"do not rewrite {DEFAULT_DOCS.name}")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.pack_cycles is not None:
        config = replace(config, pack_cycles=args.pack_cycles)
    results = run(config, args.out, None if args.no_docs else DEFAULT_DOCS)
    print(results["table"])
    print(f"\nfigure: {results['figure']}; JSON: {args.out / JSON_NAME}; wall {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
