"""The pack runtime at real sizes: cold loads, a hot neighbour during big loads, and a mixed zoo over budget.

Why: the runtime's promises (issue 12, point 5) are about 40-420 MB members, which tiny generated models
never exercise. Every figure here is a ratio against a baseline measured in the same run on the same files:

1. Cold first request for bert-mini / bert-small / bert-base members through the real tritonserver, against
   `torch.jit.load(path)` + one forward pass in this process (goal <= 1.5x).
2. p99 of a hot small member while bert-base members cold-load in the same pack, against its p99 with no
   loads (goal <= 1.2x).
3. A zoo of real-size models (tiny + bert-mini + bert-small + resnet50 + bert-base) whose bytes are >= 5x
   the pack's residency budget, Zipf s=1.1, 16 requests in flight: hit rate, loads per second, p50/p99, the
   stub's RSS against the budget (goal: growth over the empty stub within 10 % of the budget, no OOM).

Run: ``python -m benchmarks.real_size [--quick]``; results go to docs/benchmarks-real-size.md and
results/real_size.json. Models come from ``model_repository.generator.generate_profile`` and are cached
under ~/.cache/triton-fleet/real-size (they are never committed).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

from fleet.settings import DevelopmentSettings
from fleet.triton_server import TritonServer
from model_repository.contract import request_parameters
from model_repository.generator import example_inputs
from model_repository.manifest import Manifest, ModelEntry
from model_repository.packing import install_runtime

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "triton" / "backends" / "pack" / "model.py"
CACHE = DevelopmentSettings.from_env().real_size_cache
MIB = 2**20


@dataclass(frozen=True)
class Plan:
    """Sizes of one run; --quick keeps the same shape at a fraction of the time."""

    cold_kinds: tuple[str, ...] = ("bert-mini", "bert-small", "bert-base")
    cold_rounds: int = 3  # each round: a cold request for each of the pack's two members
    neighbour_seconds: float = 15.0
    neighbour_big: str = "bert-base"
    zoo: dict[str, int] = field(default_factory=lambda: {"tiny": 120, "bert-mini": 40, "bert-small": 4,
                                                         "resnet50": 2, "bert-base": 6})
    zoo_budget: int = 900 * MIB
    zoo_seconds: float = 90.0
    in_flight: int = 16
    zipf_s: float = 1.1

    @classmethod
    def quick(cls) -> Plan:
        return cls(cold_kinds=("bert-mini", "bert-small"), cold_rounds=2,
                   neighbour_seconds=6.0, neighbour_big="bert-small",
                   zoo={"tiny": 40, "bert-mini": 18, "bert-small": 2}, zoo_budget=192 * MIB, zoo_seconds=25.0)


def models(kind: str, count: int, seed: int = 0) -> tuple[Path, Manifest]:
    """`count` models of one profile, generated once into the cache."""
    from model_repository.generator import generate_profile as generate

    folder = CACHE / f"{kind}-{count}-s{seed}"
    if not (folder / "manifest.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"generating {count} {kind} models into {folder} (cached for later runs)", flush=True)
        generate(tmp, count, kind, seed)
        tmp.rename(folder)
    return folder, Manifest.read(folder)


# ---- packs ---------------------------------------------------------------------------------------
def _signature_name(entry: ModelEntry, index: int) -> str:
    spec = entry.inputs[index]
    return f"IN_{spec.dtype}_{'x'.join(str(d) for d in spec.shape[1:])}"


def write_pack(repository: Path, name: str, members: list[tuple[Path, ModelEntry]], budget: int,
               **parameters: str) -> dict[str, ModelEntry]:
    """A pack with members of different signatures: each distinct input signature is its own optional
    input of the pack (IN_<dtype>_<dims>), so bert, resnet and tiny members can share one stub."""
    version = repository / name / "1"
    (version / "members").mkdir(parents=True)
    install_runtime(version)
    document, inputs = {}, {}
    for folder, entry in members:
        target = version / "members" / Path(entry.file).name
        os.link(folder / entry.file, target) if _same_device(folder, version) else shutil.copyfile(
            folder / entry.file, target)
        names = [_signature_name(entry, k) for k in range(len(entry.inputs))]
        for input_name, spec in zip(names, entry.inputs, strict=True):
            inputs[input_name] = (spec.dtype, spec.shape[1:])
        document[entry.id] = {
            "file": f"members/{target.name}", "format": entry.format, "sha256": entry.sha256,
            "bytes": entry.bytes,
            "inputs": [{"name": n, "dtype": s.dtype, "shape": s.shape,
                        **({"value_range": list(s.value_range)} if s.value_range else {})}
                       for n, s in zip(names, entry.inputs, strict=True)],
            "outputs": [{"name": "OUTPUT__0", "dtype": o.dtype, "shape": o.shape} for o in entry.outputs[:1]]}
    (version / "members.json").write_text(json.dumps({"generation": 1, "members": document}))
    lines = [f'name: "{name}"', 'backend: "python"', "max_batch_size: 64",
             "dynamic_batching { max_queue_delay_microseconds: 500 }", "instance_group { kind: KIND_CPU count: 1 }",
             'output { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [-1] }']
    for input_name, (dtype, dims) in inputs.items():
        lines.append(f'input {{ name: "{input_name}" data_type: TYPE_{dtype} dims: {list(dims)} optional: true }}')
    for key, value in {"family": "cpu", "torch_threads": "1", "max_resident_bytes": str(budget),
                       **parameters}.items():
        lines.append(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')
    (version.parent / "config.pbtxt").write_text("\n".join(lines) + "\n")
    return {entry.id: entry for _, entry in members}


def _same_device(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def request_inputs(entry: ModelEntry, seed: int = 0):
    import tritonclient.grpc as grpcclient

    tensors = []
    for k, array in enumerate(example_inputs(entry, batch=1, seed=seed)):
        tensor = grpcclient.InferInput(_signature_name(entry, k), list(array.shape), entry.inputs[k].dtype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def metric(server: TritonServer, family: str, pack: str, member: str | None = None) -> float:
    wanted = [f'pack="{pack}"'] + ([f'member="{member}"'] if member else [])
    total = 0.0
    for line in server.metrics().splitlines():
        if line.startswith(family + "{") and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def stub_process(server: TritonServer, pack: str) -> psutil.Process:
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "triton_python_backend_stub" in child.name() and any(pack + "_0" in a for a in child.cmdline()):
                return child
        except psutil.Error:
            continue
    raise RuntimeError(f"no stub process found for pack {pack}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# ---- 1. cold first request -------------------------------------------------------------------------
def baseline_load_and_forward(entry: ModelEntry, folder: Path) -> float:
    """Seconds of torch.jit.load(path) + one forward, in this process, 1 thread, file in page cache."""
    import torch

    torch.set_num_threads(1)
    path = folder / entry.file
    path.read_bytes()  # page cache, as for the server's load
    arrays = [torch.from_numpy(a) for a in example_inputs(entry, batch=1)]
    started = time.perf_counter()
    module = torch.jit.load(str(path))
    with torch.inference_mode():
        module(*arrays)
    return time.perf_counter() - started


def cold_requests(plan: Plan, work: Path) -> list[dict]:
    """Each kind gets a pack with two members and room for one, so alternating requests are all cold."""
    import tritonclient.grpc as grpcclient

    results = []
    repository = work / "cold-repo"
    packs = {}
    for kind in plan.cold_kinds:
        folder, manifest = models(kind, 2)
        budget = int(max(m.bytes for m in manifest.models) * 1.6)
        packs[kind] = (folder, write_pack(repository, f"cold-{kind}", [(folder, m) for m in manifest.models],
                                          budget), budget)
    warm_folder, warm_manifest = models("tiny", 2)
    write_pack(repository, "cold-warmup", [(warm_folder, m) for m in warm_manifest.models], 64 * MIB)
    with TritonServer(repository) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        server.load("cold-warmup")  # the stub's one-time costs (first torch.jit.load) are not a member's
        for entry in warm_manifest.models:
            client.infer("cold-warmup", request_inputs(entry), parameters=request_parameters(entry.id))
        for kind, (folder, members, budget) in packs.items():
            name = f"cold-{kind}"
            server.load(name)
            entries = list(members.values())
            times, baselines = [], []
            # Baseline and server alternate on the same file, so a busy moment of the shared machine hits both.
            for round_ in range(plan.cold_rounds * 2):
                entry = entries[round_ % 2]
                baselines.append(baseline_load_and_forward(entry, folder))
                started = time.perf_counter()
                client.infer(name, request_inputs(entry), parameters=request_parameters(entry.id))
                times.append(time.perf_counter() - started)
            time.sleep(0.5)  # the loader flushes its counters just after it answers
            loads = metric(server, "fleet_pack_loads_total", name)
            server.unload(name)
            cold, baseline = statistics.median(times), statistics.median(baselines)
            results.append({"kind": kind, "file_mib": entries[0].bytes / MIB, "budget_mib": budget / MIB,
                            "cold_first_request_s": cold, "cold_all_s": times, "baseline_all_s": baselines,
                            "loads": loads,
                            "baseline_load_forward_s": baseline, "ratio": cold / baseline})
            print(f"cold {kind}: {cold:.3f} s vs torch.jit.load+forward {baseline:.3f} s -> "
                  f"{cold / baseline:.2f}x ({int(loads)} loads for {len(times)} requests)", flush=True)
        client.close()
    return results


# ---- 2. hot neighbour during big loads ------------------------------------------------------------
def neighbour(plan: Plan, work: Path) -> dict:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    tiny_folder, tiny = models("tiny", 2)
    big_folder, big = models(plan.neighbour_big, 2)
    hot = tiny.models[0]
    budget = int(max(m.bytes for m in big.models) * 1.6)
    repository = work / "neighbour-repo"
    write_pack(repository, "neighbour", [(tiny_folder, hot)] + [(big_folder, m) for m in big.models], budget,
               preload=hot.id)
    with TritonServer(repository, load_models=("neighbour",)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        hot_inputs = request_inputs(hot)

        def hot_latencies(seconds: float) -> list[float]:
            latencies, deadline = [], time.monotonic() + seconds
            while time.monotonic() < deadline:
                started = time.perf_counter()
                client.infer("neighbour", hot_inputs, parameters=request_parameters(hot.id))
                latencies.append((time.perf_counter() - started) * 1e3)
            return latencies

        hot_latencies(1.0)  # warm: TorchScript's first calls profile and optimise
        quiet = hot_latencies(plan.neighbour_seconds)
        stop, loader_errors = threading.Event(), []
        loads_before = metric(server, "fleet_pack_loads_total", "neighbour")

        def cycle_big_members() -> None:
            other = grpcclient.InferenceServerClient(server.grpc_url)
            k = 0
            while not stop.is_set():
                entry = big.models[k % 2]
                try:
                    other.infer("neighbour", request_inputs(entry), parameters=request_parameters(entry.id))
                except InferenceServerException as error:
                    loader_errors.append(str(error))
                k += 1
            other.close()

        thread = threading.Thread(target=cycle_big_members)
        thread.start()
        busy = hot_latencies(plan.neighbour_seconds)
        stop.set()
        thread.join()
        loads = metric(server, "fleet_pack_loads_total", "neighbour") - loads_before
        client.close()
    result = {"hot_member": hot.id, "big_kind": plan.neighbour_big, "big_file_mib": big.models[0].bytes / MIB,
              "quiet": summary(quiet), "during_loads": summary(busy), "loads_during": loads,
              "loader_errors": loader_errors[:3],
              "ratio_p99": percentile(busy, 99) / percentile(quiet, 99),
              "ratio_p50": percentile(busy, 50) / percentile(quiet, 50)}
    print(f"neighbour: p99 {percentile(quiet, 99):.1f} ms quiet, {percentile(busy, 99):.1f} ms during "
          f"{int(loads)} {plan.neighbour_big} loads -> {result['ratio_p99']:.2f}x", flush=True)
    return result


def summary(latencies_ms: list[float]) -> dict:
    return {"requests": len(latencies_ms), "p50_ms": percentile(latencies_ms, 50),
            "p99_ms": percentile(latencies_ms, 99), "max_ms": max(latencies_ms) if latencies_ms else None}


# ---- 3. the zoo over budget ------------------------------------------------------------------------
def zoo(plan: Plan, work: Path) -> dict:
    members: list[tuple[Path, ModelEntry]] = []
    for kind, count in plan.zoo.items():
        folder, manifest = models(kind, count)
        members += [(folder, m) for m in manifest.models]
    total = sum(m.bytes for _, m in members)
    repository = work / "zoo-repo"
    by_id = write_pack(repository, "zoo", members, plan.zoo_budget)
    rng = np.random.default_rng(11)
    ranked = [m.id for _, m in members]
    rng.shuffle(ranked)  # which member is popular is independent of its size
    weights = 1.0 / np.arange(1, len(ranked) + 1) ** plan.zipf_s
    sequence = rng.choice(len(ranked), size=200_000, p=weights / weights.sum())
    with TritonServer(repository, load_models=("zoo",)) as server:
        stub = stub_process(server, "zoo")
        empty_rss = stub.memory_info().rss
        samples: list[int] = []
        stop = threading.Event()

        def sample_rss() -> None:
            while not stop.is_set():
                try:
                    samples.append(stub.memory_info().rss)
                except psutil.Error:
                    return
                stop.wait(0.2)

        sampler = threading.Thread(target=sample_rss)
        sampler.start()
        latencies, codes, seconds = asyncio.run(_drive(server.grpc_url, by_id, ranked, sequence, plan))
        stop.set()
        sampler.join()
        alive = stub.is_running()
        hits = metric(server, "fleet_pack_hits_total", "zoo")
        misses = metric(server, "fleet_pack_misses_total", "zoo")
        loads = metric(server, "fleet_pack_loads_total", "zoo")
        evictions = metric(server, "fleet_pack_evictions_total", "zoo")
        load_seconds = metric(server, "fleet_pack_load_seconds_total", "zoo")
        resident = metric(server, "fleet_pack_resident_bytes", "zoo")
    peak = max(samples) if samples else empty_rss
    settled = samples[len(samples) // 2:] or [empty_rss]
    result = {
        "members": len(members), "zoo_bytes_mib": total / MIB, "budget_mib": plan.zoo_budget / MIB,
        "zoo_over_budget": total / plan.zoo_budget, "kinds": plan.zoo, "in_flight": plan.in_flight,
        "zipf_s": plan.zipf_s, "seconds": seconds, "requests": len(latencies) + sum(codes.values()),
        "ok": len(latencies), "errors_by_code": codes, "rps": len(latencies) / seconds,
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
        "hit_rate": hits / (hits + misses) if hits + misses else None, "loads": loads,
        "loads_per_s": loads / seconds, "evictions": evictions, "load_seconds": load_seconds,
        "accounted_resident_mib": resident / MIB, "stub_rss_empty_mib": empty_rss / MIB,
        "stub_rss_peak_mib": peak / MIB, "stub_rss_mean_mib": statistics.mean(settled) / MIB,
        "rss_growth_peak_over_budget": (peak - empty_rss) / plan.zoo_budget,
        "rss_growth_mean_over_budget": (statistics.mean(settled) - empty_rss) / plan.zoo_budget,
        "stub_alive": alive}
    print(f"zoo: {len(members)} members, {total / MIB:.0f} MiB = {result['zoo_over_budget']:.1f}x the "
          f"{plan.zoo_budget / MIB:.0f} MiB budget; hit rate {result['hit_rate']}, {loads / seconds:.2f} loads/s, "
          f"p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms; stub RSS {empty_rss / MIB:.0f} MiB empty, "
          f"peak {peak / MIB:.0f} MiB -> growth {result['rss_growth_peak_over_budget']:.2f}x budget; errors {codes}",
          flush=True)
    return result


async def _drive(url: str, by_id: dict[str, ModelEntry], ranked: list[str], sequence: np.ndarray,
                 plan: Plan) -> tuple[list[float], dict[str, int], float]:
    import tritonclient.grpc.aio as aioclient
    from tritonclient.utils import InferenceServerException

    client = aioclient.InferenceServerClient(url)
    inputs = {ident: request_inputs(entry) for ident, entry in by_id.items()}
    latencies: list[float] = []
    codes: dict[str, int] = {}
    position = 0
    deadline = time.monotonic() + plan.zoo_seconds

    async def worker() -> None:
        nonlocal position
        while time.monotonic() < deadline:
            ident = ranked[int(sequence[position % len(sequence)])]
            position += 1
            started = time.perf_counter()
            try:
                await client.infer("zoo", inputs[ident], parameters=request_parameters(ident))
                latencies.append((time.perf_counter() - started) * 1e3)
            except InferenceServerException as error:
                code = str(error.status()).rsplit(".", 1)[-1]
                codes[code] = codes.get(code, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(plan.in_flight)))
    seconds = time.monotonic() - started
    await client.close()
    return latencies, codes, seconds


# ---- report --------------------------------------------------------------------------------------
def environment() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "machine": platform.machine()}


def markdown(results: dict) -> str:
    cold, near, z = results["cold"], results["neighbour"], results["zoo"]
    lines = ["# Benchmarks: the pack runtime at real sizes", "",
             f"Latest `python -m benchmarks.real_size{' --quick' if results['quick'] else ''}` "
             f"({results['finished']}, {results['seconds']:.0f} s; torch {results['environment']['torch']}, "
             f"{results['environment']['cpus']} CPUs, load average at start "
             f"{results['environment']['load_average'][0]:.1f}). Every ratio is against a baseline measured in "
             "the same run; the machine is shared, so absolute times vary between runs.", "",
             "## Cold first request vs `torch.jit.load(path)` + one forward (goal <= 1.5x)", "",
             "| member | file MiB | cold request s (median) | jit.load + forward s (median) | ratio |",
             "|---|---|---|---|---|"]
    for row in cold:
        lines.append(f"| {row['kind']} | {row['file_mib']:.0f} | {row['cold_first_request_s']:.3f} | "
                     f"{row['baseline_load_forward_s']:.3f} | {row['ratio']:.2f}x |")
    lines += ["", "## Hot small member while big members cold-load in the same pack (goal p99 <= 1.2x)", "",
              "| phase | requests | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    for phase in ("quiet", "during_loads"):
        s = near[phase]
        lines.append(f"| {phase.replace('_', ' ')} | {s['requests']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                     f"{s['max_ms']:.1f} |")
    lines += ["", f"{int(near['loads_during'])} {near['big_kind']} loads ({near['big_file_mib']:.0f} MiB each) "
              f"during the second phase; p99 ratio **{near['ratio_p99']:.2f}x**, p50 ratio {near['ratio_p50']:.2f}x.",
              "", "## Zoo over budget: Zipf s=1.1, 16 in flight", "",
              f"{z['members']} members ({', '.join(f'{v} {k}' for k, v in z['kinds'].items())}), "
              f"{z['zoo_bytes_mib']:.0f} MiB = **{z['zoo_over_budget']:.1f}x** the pack's "
              f"{z['budget_mib']:.0f} MiB budget, {z['seconds']:.0f} s.", "",
              "| measure | value |", "|---|---|",
              f"| answered / errors | {z['ok']} / {z['errors_by_code'] or 0} |",
              f"| rps | {z['rps']:.1f} |",
              f"| hit rate | {z['hit_rate']:.3f} |" if z["hit_rate"] is not None else "| hit rate | n/a |",
              f"| loads, loads/s | {int(z['loads'])}, {z['loads_per_s']:.2f} |",
              f"| evictions | {int(z['evictions'])} |",
              f"| p50 / p99 ms | {z['p50_ms']:.1f} / {z['p99_ms']:.1f} |",
              f"| stub RSS empty / mean (2nd half) / peak MiB | {z['stub_rss_empty_mib']:.0f} / "
              f"{z['stub_rss_mean_mib']:.0f} / {z['stub_rss_peak_mib']:.0f} |",
              f"| RSS growth over budget: mean / peak (goal <= 1.10) | {z['rss_growth_mean_over_budget']:.2f} / "
              f"{z['rss_growth_peak_over_budget']:.2f} |",
              f"| accounted resident MiB at the end | {z['accounted_resident_mib']:.0f} |",
              f"| stub alive at the end (no OOM) | {z['stub_alive']} |", "",
              "## Goals", ""]
    worst_cold = max(row["ratio"] for row in cold)
    lines += [f"- Cold first request <= 1.5x: {_verdict(worst_cold <= 1.5)} (worst {worst_cold:.2f}x).",
              f"- Hot neighbour p99 <= 1.2x during big loads: {_verdict(near['ratio_p99'] <= 1.2)} "
              f"({near['ratio_p99']:.2f}x).",
              f"- Stub RSS growth within 10 % of the budget, no OOM: "
              f"{_verdict(z['rss_growth_peak_over_budget'] <= 1.1 and z['stub_alive'])} (peak "
              f"{z['rss_growth_peak_over_budget']:.2f}x, mean {z['rss_growth_mean_over_budget']:.2f}x).", "",
              "## Reading these figures", "",
              "- The cold request is a client round trip through Triton (gRPC, dynamic batcher, the stub's loader "
              "thread, the load from the file's path with a size check, one forward); the baseline is the same "
              "file's `torch.jit.load(path)` + one forward in the benchmark's own process, alternating with it.",
              "- The neighbour's requests are no longer queued behind a load (the loader thread answers the cold "
              "requests through their response senders), but `torch.jit.load` holds the GIL for the whole load "
              "(a 414 MiB file: ~0.7 s; onto the `meta` device still ~0.35 s, so it is the program's "
              "deserialisation, not the tensor copy). While it runs, the stub cannot execute any Python, so the "
              "neighbour's tail is one load long. Packing big members apart from small hot ones (a pack of their "
              "own, as DESIGN.md suggests for 400 MB members) avoids it; `torch.export` members load in Python and "
              "yield the GIL every few milliseconds.",
              "- RSS growth is the stub's resident memory over the empty stub (torch imported, no member loaded), "
              "sampled every 0.2 s; the mean is over the second half of the run.", ""]
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller models and shorter phases (~3 min)")
    parser.add_argument("--work", type=Path, default=ROOT / "results" / "real-size-work")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "real_size.json")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks-real-size.md")
    parser.add_argument("--render", type=Path, help="only re-write --doc from a results JSON of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        args.doc.write_text(markdown(results))
        return results
    plan = Plan.quick() if args.quick else Plan()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    started = time.monotonic()
    results = {"quick": args.quick, "plan": asdict(plan), "environment": environment()}
    # Generate (or find cached) every model first, so that generation never overlaps a measurement.
    for kind in plan.cold_kinds:
        models(kind, 2)
    models("tiny", 2)
    models(plan.neighbour_big, 2)
    for kind, count in plan.zoo.items():
        models(kind, count)
    results["cold"] = cold_requests(plan, args.work)
    results["neighbour"] = neighbour(plan, args.work)
    results["zoo"] = zoo(plan, args.work)
    results["seconds"] = time.monotonic() - started
    results["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    args.doc.write_text(markdown(results))
    shutil.rmtree(args.work, ignore_errors=True)
    print(f"wrote {args.out} and {args.doc}")
    return results


if __name__ == "__main__":
    main()
