"""``fleet bench``: every benchmark of the fleet, side by side, in one run, each against a baseline measured
in that same run (the machine is small, shared and noisy, so only same-run ratios mean anything).

Sections, in the order they run (each module says why it measures what it does):

* ``data_plane`` (``benchmarks.data_plane.run``): density and load time, packs vs dedicated; cold start;
* ``peers`` (``benchmarks.peers``): packs vs the classic FastAPI server, and vs a no-op Triton floor;
* ``loadgen`` (``benchmarks.loadgen``): locust vs the raw asyncio driver on the peers' packs server;
* ``adfilter`` (``benchmarks.adfilter_bench``): raw OpenRTB JSON -> decision at saturation;
* ``families`` (``benchmarks.families``, only with ``--only families``: it generates 13 BERT-base models, ~11 GiB
  with their splits): architecture families vs the whole-artifact path, its own docs/benchmarks-families.md;
* ``gpu`` (``benchmarks.gpu``, only with ``--gpu``): packs on CUDA vs raw batched torch vs FastAPI on GPU.

Writes ``OUT/bench.json`` (plus a timestamped copy), and with docs ``docs/benchmarks.md`` and
``docs/img/bench-peers.png``; every goal's verdict is computed in ``benchmarks.report``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import data_plane, families, report
from benchmarks.adfilter_bench import AdfilterConfig, phase_adfilter
from benchmarks.common import _display, _say, environment, package_versions
from benchmarks.data_plane_config import BenchConfig
from benchmarks.families import FamiliesConfig
from benchmarks.families_report import goals as families_goals
from benchmarks.gpu import GpuConfig, cuda_unavailable_reason, run_gpu
from benchmarks.loadgen import LoadgenConfig, phase_loadgen
from benchmarks.peers import PeersConfig, measure, serving, zipf_share_of_top
from benchmarks.serving import ensure_models

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "results" / "bench"
DEFAULT_DOCS = REPO_ROOT / "docs" / "benchmarks.md"
PLOT_NAME = "bench-peers.png"
JSON_NAME = "bench.json"
SECTIONS = ("data_plane", "peers", "loadgen", "adfilter", "families", "gpu")
CPU_SECTIONS = ("data_plane", "peers", "loadgen", "adfilter")  # the default; families and gpu on request
FAMILIES_DOCS = REPO_ROOT / "docs" / "benchmarks-families.md"


@dataclass(frozen=True)
class SuiteConfig:
    mode: str = "full"
    seed: int = 0
    sections: tuple[str, ...] = CPU_SECTIONS
    data_plane: BenchConfig = field(default_factory=lambda: data_plane.FULL)
    peers: PeersConfig = field(default_factory=PeersConfig)
    loadgen: LoadgenConfig = field(default_factory=LoadgenConfig)
    adfilter: AdfilterConfig = field(default_factory=AdfilterConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    families: FamiliesConfig = field(default_factory=lambda: families.FULL)


# Full: the sizes (1,000 models everywhere); data_plane's FULL, minus one servable repeat and with
# shorter Zipf runs, which the peers section now covers at length. 11-13 minutes on 2 shared cores.
FULL = SuiteConfig(
    data_plane=replace(data_plane.FULL, memory_models=300, servable_repeats=2, zipf_seconds=8.0, zipf_pairs=2),
    peers=PeersConfig(models=1000, seconds=10.0, rounds=3, warmup_seconds=3.0,
                      sweep_concurrency=(1, 4, 16, 64), sweep_seconds=3.0),
    loadgen=LoadgenConfig(users=16, seconds=15, rounds=2),
    adfilter=AdfilterConfig(),
)
# Quick: under 5 minutes on 2 cores; still 1,000 models for the servable goal (generation is cached).
QUICK = SuiteConfig(
    mode="quick",
    data_plane=replace(data_plane.QUICK, memory_models=300, dedicated_cap=6, servable_models=1000,
                       cold_members=100, zipf_models=300, zipf_seconds=2.0, zipf_warmup_seconds=0.5,
                       zipf_pairs=1),
    peers=PeersConfig(models=300, seconds=4.0, rounds=2, warmup_seconds=1.0, sweep_concurrency=(2, 8, 32),
                      sweep_seconds=1.5),
    loadgen=LoadgenConfig(users=16, seconds=5, rounds=1),
    adfilter=AdfilterConfig(train_rows=20_000, train_epochs=2, requests=3000, concurrency=(4, 16, 64), rounds=1),
    families=families.QUICK,
)


def versions() -> dict[str, str]:
    return {**environment()["versions"], **package_versions(
        ("fastapi", "uvicorn", "uvloop", "httptools", "aiohttp", "locust", "matplotlib"))}


def run(config: SuiteConfig = FULL, out: Path = DEFAULT_OUT, docs: Path | None = None,
        progress: bool = True) -> dict:
    """Run the configured sections; write OUT/bench.json (and `docs` with its plot); return the results."""
    out = Path(out)
    work = out / "work"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    sections: dict[str, float] = {}
    results: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "mode": config.mode,
                     "config": asdict(config), "environment": {**environment(), "versions": versions(),
                                                               "cuda": cuda_unavailable_reason() or "available"}}
    needed = max([config.peers.models] + ([max(config.data_plane.memory_models, config.data_plane.servable_models,
                                                config.data_plane.zipf_models)]
                                          if "data_plane" in config.sections else []))
    # the tiny models the peers, data-plane, load-generator and GPU sections share (families brings its own)
    uses_models = {"data_plane", "peers", "loadgen", "gpu"} & set(config.sections)
    models_dir = ensure_models(work, needed, config.seed, progress) if uses_models else None

    if "data_plane" in config.sections:
        _say("== data plane: density, load time, cold start (benchmarks.data_plane) ==", progress)
        begun = time.perf_counter()
        results["data_plane"] = data_plane.run(replace(config.data_plane, seed=config.seed), out / "data_plane",
                                               work=work, docs=None, progress=progress)
        sections["data_plane"] = time.perf_counter() - begun
    if "peers" in config.sections or "loadgen" in config.sections:
        peers_config = config.peers
        if "peers" not in config.sections:  # load generators only need the packs server
            peers_config = replace(peers_config, contenders=("packs_grpc",))
        _say(f"== peers: packs vs FastAPI vs no-op floor, {peers_config.models} models ==", progress)
        begun = time.perf_counter()
        with serving(models_dir, work, peers_config, progress) as served:
            if "peers" in config.sections:
                results["peers"] = measure(served, peers_config, config.seed, progress)
                results["peers"]["zipf_top10_share"] = zipf_share_of_top(len(served["targets"]), peers_config.zipf_s)
                sections["peers"] = time.perf_counter() - begun
            if "loadgen" in config.sections:
                begun = time.perf_counter()
                _say("== load generators: locust vs raw asyncio on the same packs server ==", progress)
                results["loadgen"] = phase_loadgen(served["packs"].grpc_url, served["source"], peers_config.pack_size,
                                                   config.loadgen, out / "locust", config.seed, progress)
                sections["loadgen"] = time.perf_counter() - begun
    if "adfilter" in config.sections:
        _say("== ad filter: raw OpenRTB JSON -> decision ==", progress)
        begun = time.perf_counter()
        results["adfilter"] = phase_adfilter(work, config.adfilter, progress)
        sections["adfilter"] = time.perf_counter() - begun
    if "families" in config.sections:
        _say("== architecture families vs the whole-artifact path (benchmarks.families) ==", progress)
        begun = time.perf_counter()
        results["families"] = families.run(replace(config.families, seed=config.seed), out / "families",
                                           FAMILIES_DOCS if docs is not None else None)
        sections["families"] = time.perf_counter() - begun
    if "gpu" in config.sections:
        _say("== GPU: packs on CUDA vs raw batched torch vs FastAPI on GPU ==", progress)
        begun = time.perf_counter()
        results["gpu"] = run_gpu(models_dir, work, config.gpu, config.seed, progress)
        sections["gpu"] = time.perf_counter() - begun
    else:
        results["gpu"] = {"skipped": "not requested (run `fleet bench --gpu` on a machine with an NVIDIA GPU)"
                          + (f"; this machine: {reason}" if (reason := cuda_unavailable_reason()) else "")}

    results["load_average"] = [load_start, os.getloadavg()[0]]
    results["section_seconds"] = sections
    results["wall_s"] = time.perf_counter() - started
    json_path = out / JSON_NAME
    json_path.write_text(json.dumps(results, indent=1, default=float) + "\n")  # kept if the report fails
    results["goals"] = report.goals(results)
    results["goals_table"] = report.goals_table(results["goals"])
    json_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
    shutil.copyfile(json_path, out / f"bench-{config.mode}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json")
    if docs is not None:
        plot_path = report.plot(results, Path(docs).parent / "img" / PLOT_NAME)
        write_docs(results, Path(docs), json_path, plot_path)
    else:
        report.plot(results, out / PLOT_NAME)
    return results


def scale_note(config: dict) -> str:
    peers, dp = config["peers"], config["data_plane"]
    if config["mode"] == "full":
        return (f"Full mode: {peers['models']} models for the peers, {peers['rounds']} rounds of "
                f"{peers['seconds']:g} s per contender.")
    return (f"{config['mode'].upper()} mode: {peers['models']} models for the peers ({peers['rounds']} rounds of "
            f"{peers['seconds']:g} s), {dp['memory_models']} for memory (dedicated cap {dp['dedicated_cap']}), "
            f"{dp['servable_models']} to servable, {dp['cold_members']} cold members; short runs, so the "
            "numbers are noisier than a full run's.")


def _gpu_section(results: dict) -> str:
    gpu = results.get("gpu") or {}
    how = """How to run it on a machine with an NVIDIA GPU (a CUDA build of torch in `.venv`, and a numpy < 2
environment first on `PATH` for the Python-backend stub, see `shared/NOTES.md` "On a machine with an NVIDIA
GPU"):

    fleet bench --gpu            # writes results/bench/gpu/bench.json and docs/benchmarks-gpu.md

Contenders, same models and Zipf sequence: the packs with `configs/gpu.pbtxt` (members on `cuda:0`) over
gRPC; the FastAPI server with `--device cuda`; and the limit, raw batched torch in one process (the same
TorchScript models on the GPU, fed the sequence in groups of the same concurrency, one forward pass per
member per group, no server). Without CUDA the command prints why and exits 0."""
    if gpu.get("skipped"):
        gpu_docs = DEFAULT_DOCS.with_name("benchmarks-gpu.md")
        history = (f"A GPU run's report is in `{gpu_docs.name}`." if gpu_docs.exists() else
                   "The GPU variant (`benchmarks/gpu.py`) has not been run on a GPU yet: there is no "
                   f"`docs/{gpu_docs.name}`, and no GPU number appears in this document.")
        return f"**Not run in this run**: {gpu['skipped']}. {history}\n\n{how}"
    summary = gpu.get("summary", {})
    rows = [("contender", "rps", "p99 ms")] + [(k, report._f(v["rps"], 0), report._f(v["p99_ms"], 2))
                                                for k, v in summary.items()]
    return f"Ran on {gpu.get('device')}.\n\n{report._markdown(rows)}\n\n{how}"


def _limit_line(peers: dict) -> str:
    limit = peers.get("torch_limit")
    if not limit:
        return ""
    return (f"\nThe limit, bare torch in the benchmark process on one thread over the same sequence (no server, batch "
            f"1): {report._f(limit['rps'], 0)} requests/s, {report._f(limit['us_per_request'], 0)} us per forward "
            "pass (median of rounds; it ran after each round's contenders).\n")


def write_docs(results: dict, path: Path, json_path: Path, plot_path: Path | None) -> None:
    env, config = results["environment"], results["config"]
    v = env["versions"]
    flag = " --quick" if results["mode"] == "quick" else ""
    cuda = env.get("cuda") or cuda_unavailable_reason() or "available"
    triton = (results.get("data_plane") or {}).get("zipf", {}).get("tritonserver_version", "2.51")
    full_time = (f"this run took {results['wall_s'] / 60:.0f} minutes" if results["mode"] == "full"
                 else "10-15 minutes on 2 cores")
    parts = [f"""# Benchmarks: packs against their peer, their floor and their limits

Generated by `fleet bench{flag}` on {results['date']} in {results['wall_s'] / 60:.1f} minutes; every number
below comes from that one run (raw results: `{_display(json_path)}`, git-ignored). Each claim is a ratio
against a baseline measured in the same run, contenders alternating, medians reported.
{scale_note(config)}

## Machine and versions

- CPU: {env['cpu_model']}, {env['logical_cpus']} logical cores; RAM {env['ram_gib']:.1f} GiB; Linux {env['kernel']};
  CUDA: {cuda}. The machine is shared: load average (1 min)
  {results['load_average'][0]:.2f} at start, {results['load_average'][1]:.2f} at the end; client and servers
  share the same cores.
- Python {env['python']}; tritonserver {triton} from nvidia-pytriton {v['nvidia-pytriton']} (Python backend);
  torch {v['torch']}, numpy {v['numpy']}, tritonclient {v['tritonclient']}, grpcio {v['grpcio']};
  fastapi {v['fastapi']}, uvicorn {v['uvicorn']} (uvloop {v['uvloop']}, httptools {v['httptools']}),
  aiohttp {v['aiohttp']}, locust {v['locust']}.

## Goals

{results['goals_table']}

"met" / "not met" are computed by `benchmarks/report.py` from the numbers in the JSON; "not evaluated"
means this run's scale cannot decide the goal; "-" marks a comparison without a goal.
"""]
    peers = results.get("peers")
    if peers:
        plot_md = f"\n![rps and concurrency sweep]({plot_path.relative_to(path.parent)})\n" if plot_path else ""
        parts.append(f"""## 1-2. Packs vs the classic FastAPI server, and vs the no-op floor

{peers['models']} models ({peers['packs']} packs), Zipf s={peers['zipf_s']} (the 10 hottest models get
{peers['zipf_top10_share']:.0%} of requests), {peers['concurrency']} requests in flight (closed loop),
{peers['rounds']} rounds of {peers['seconds_per_run']:g} s per contender; medians of rounds. "Best rps with
p99 within budget" comes from a sweep over {peers['sweep_concurrency']} in flight.

{report.peers_table(peers)}
{_limit_line(peers)}
{plot_md}
Runs in the order they ran:

{report.runs_table(peers['runs'])}

Concurrency sweep:

{report.runs_table(peers['sweep'])}
""")
    dp = results.get("data_plane")
    if dp:
        parts.append(f"""## 3-4. Density, load time and cold start (`benchmarks/data_plane.py`)

{dp['table']}

Data-plane Zipf runs (dynamic batching A/B), with Triton's own per-request timings:

{dp['runs_table']}
""")
    loadgen = results.get("loadgen")
    if loadgen:
        parts.append(f"""## 5. Load generators: locust vs the raw asyncio driver

Same packs server as section 1, {loadgen['users']} locust users vs {loadgen['users']} requests in flight,
{loadgen['seconds_per_run']} s per run, Zipf s={loadgen['zipf_s']}; locust's rate includes its one-second ramp.

{report.loadgen_table(loadgen)}
""")
    adfilter = results.get("adfilter")
    if adfilter:
        s = adfilter["summary"]
        parts.append(f"""## 6. Ad filter: raw OpenRTB JSON -> decision

A model trained on {adfilter['train_rows']:,} synthetic rows, served by the `adfilter` Python-backend model
(dynamic batching); `adfilter.benchmark.run_triton_benchmark` sends {adfilter['requests_per_run']:,} distinct
bid requests per run. Saturation = the concurrency with the highest rps ({s['saturation_concurrency']}); best
rps with p99 <= {adfilter['p99_budget_ms']:g} ms: {report._f(s['rps_within_budget'], 0)}
(at {s['concurrency_within_budget']} in flight). Baseline: the same featurise + score work in-process on one
thread, batched by 512 ({report._f(s['offline_scorer_rps'], 0)} requests/s; featurising alone
{s['featurize_us']:.1f} us/request).

{report.adfilter_table(adfilter)}
""")
    parts.append(f"## 7. GPU\n\n{_gpu_section(results)}\n")
    lines = report.observations(results)
    if lines:
        parts.append("## Where the time goes\n\n" + "\n".join(lines) + "\n")
    parts.append(f"""## Method

- **Same models**: `model_repository.generator` (seed {config['seed']}; MLP, CNN and EmbeddingBag text models in
  equal numbers, TorchScript). Packs of {config['peers']['pack_size']} members per architecture, `PackSettings()`
  (dynamic batching 500 us, one CPU instance, torch on one thread).
- **Same cores, same client kind**: servers and client run on this machine; every HTTP contender is driven by
  the same aiohttp code, every gRPC contender by the same `tritonclient.grpc.aio` code, both through
  `loadtest.raw_driver.closed_loop`; request bodies and tensors are built once per model before the clock.
- **FastAPI baseline** (`benchmarks/fastapi_baseline.py`): uvicorn with one worker per core (workers = cores;
  each worker holds every model), uvloop/httptools, access log off, every model loaded at start into a dict,
  `POST /predictions/{{model}}` with `{{"inputs": [...]}}`, pydantic validation, forward pass inline in an
  `async def` handler under `torch.inference_mode()`, torch on one thread per worker, JSON out. The fair
  comparison is 1b: the same protocol (HTTP/JSON) and the same aiohttp client for both; 1a sets the packs'
  gRPC against FastAPI's HTTP/JSON.
- **Floor** (`benchmarks/floor_model.py`): the packs repository with each `model.py` replaced by a no-op that
  answers zeros of the member's output width: same configs, batching, instances and request shape.
- **The limit** (`benchmarks/torch_limit.py`): the same TorchScript models and sequence through bare torch in
  the benchmark process, one thread, one request per forward pass, after each round's contenders.
- **Pack runtime alone** (`benchmarks/pack_runtime.py`): the packs' real `model.py` loaded in-process against a
  plain-Python stand-in for `triton_python_backend_utils`, `execute()` timed per request over the same
  sequence; its own forward-pass counter splits torch from routing.
- **CPU per answer**: CPU seconds of the server's process tree (tritonserver with its stubs, or uvicorn) and
  of the client process during each run, divided by the answers; steadier than rps on a shared machine.
- **Alternation**: contenders run one at a time, in an order that rotates every round; all servers stay up.
- Sections' wall time: {', '.join(f'{k} {v:.0f} s' for k, v in results['section_seconds'].items())}.

Re-run: `fleet bench --quick` (under 5 minutes) or `fleet bench` (the full sizes; {full_time}).
`fleet bench --help` lists the options (`--only peers,adfilter`, `--out`, `--no-docs`, `--gpu`).
""")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def render(json_path: Path, docs: Path) -> None:
    """Rewrite the report and its plot from a saved bench.json (no measurement; e.g. after a report fix)."""
    results = json.loads(Path(json_path).read_text())
    results["goals"] = report.goals(results)
    results["goals_table"] = report.goals_table(results["goals"])
    write_docs(results, docs, Path(json_path), report.plot(results, docs.parent / "img" / PLOT_NAME))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, shorter runs (under 5 minutes)")
    parser.add_argument("--gpu", action="store_true",
                        help="run the GPU variant only (needs CUDA; exits 0 with a message where there is none)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated sections to run, of {','.join(SECTIONS[:-1])} (default: "
                             f"{','.join(CPU_SECTIONS)}; families only when named: it generates ~11 GiB of models)")
    parser.add_argument("--out", type=Path, default=None, help=f"results folder (default {_display(DEFAULT_OUT)})")
    parser.add_argument("--docs", type=Path, default=None, help=f"report to write (default {_display(DEFAULT_DOCS)})")
    parser.add_argument("--no-docs", action="store_true", help="write only the JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", type=Path, default=None, metavar="BENCH_JSON",
                        help="measure nothing: rewrite the report (--docs) from a saved bench.json")
    return parser


def config_from_args(args: argparse.Namespace) -> SuiteConfig:
    config = replace(QUICK if args.quick else FULL, seed=args.seed)
    if args.gpu:
        return replace(config, sections=("gpu",))
    if args.only:
        sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
        return replace(config, sections=sections)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        docs = args.docs or DEFAULT_DOCS
        render(args.render, docs)
        print(f"report: {_display(docs)} (from {_display(args.render)})")
        return 0
    config = config_from_args(args)
    if args.gpu:
        reason = cuda_unavailable_reason()
        if reason:
            print(f"fleet bench --gpu: skipped, {reason}. Run it on a machine with an NVIDIA GPU "
                  "(see docs/benchmarks.md, section 7).")
            return 0
    if config.sections == ("families",):  # its own report, docs/benchmarks-families.md
        out = args.out or DEFAULT_OUT / "families"
        results = families.run(config.families, out, None if args.no_docs else FAMILIES_DOCS)
        for goal, met, figures in families_goals(results):
            print(f"{'met' if met else 'n/a' if met is None else 'NOT MET':8} {goal}: {figures}")
        print(f"\nJSON: {_display(out / 'families.json')}" + ("" if args.no_docs else f"; report: "
                                                               f"{_display(FAMILIES_DOCS)}"))
        return 0
    out = args.out or (DEFAULT_OUT / "gpu" if args.gpu else DEFAULT_OUT)
    docs = None if args.no_docs else (args.docs or (DEFAULT_DOCS.with_name("benchmarks-gpu.md") if args.gpu
                                                    else DEFAULT_DOCS))
    results = run(config, out, docs)
    env = results["environment"]
    print(f"\nfleet bench ({results['mode']}), {results['date']}: {env['cpu_model']}, {env['logical_cpus']} cores, "
          f"{env['ram_gib']:.1f} GiB; load average {results['load_average'][0]:.2f} -> "
          f"{results['load_average'][1]:.2f}\n")
    print(results["goals_table"])
    if "peers" in results:
        print("\n" + report.peers_table(results["peers"]))
    print(f"\nJSON: {_display(out / JSON_NAME)}" + (f"; report: {_display(docs)}" if docs else "")
          + f"; wall {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
