"""The data-plane benchmark's tables and its page (docs/benchmarks-data-plane.md), from one run's results
only (benchmarks/data_plane.py)."""
from __future__ import annotations

from pathlib import Path

from benchmarks.common import _display, _markdown, _median
from benchmarks.data_plane_config import BenchConfig


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


def scale_note(config: BenchConfig) -> str:
    if config.mode == "full":
        return "Full mode."
    return (f"{config.mode.upper()} mode: smaller counts ({config.memory_models} models for memory, dedicated cap "
            f"{config.dedicated_cap}, {config.servable_models} to servable, {config.cold_members} cold members, "
            f"Zipf over {config.zipf_models} models for {config.zipf_seconds:g} s x {config.zipf_pairs} A/B "
            "pairs) and shorter durations; not comparable with full-mode numbers.")


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
