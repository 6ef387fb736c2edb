"""Architecture families: members that are only weights, one program per architecture (issue 24).

Every figure is a ratio against a baseline measured in the same run, interleaved with it:

1. **Cold member load**: a pack whose hot member (the architecture's program is therefore loaded) is served
   continuously while each cold member of its architecture is asked twice; the load's overhead is the first
   request minus the second. Baselines, timed under the same load right before each member: its whole
   artifact's `torch.jit.load(path)` and reading its weights file from the page cache (goals <= 0.25x and
   <= 1.5x). The same on the whole-artifact path (today's) for comparison.
2. **Hot member's p99** while the cold members load in its stub, vs its quiet p99 (goal <= 1.5x).
3. **Stub RSS per resident member** (the same pack): growth per member after the first vs its weight bytes
   (goal <= 1.05x); the program is charged once (`fleet_pack_program_bytes`).
4. **Mixed zoo at ~5.4x the residency budget** (Zipf 1.1, 16 in flight): families vs the whole-artifact path
   (PackSettings.families=False, the baseline knob), A B A B (goals: >= 3x rps, <= 0.3x p99).
5. **Batches across members**: 32 hot members of one architecture, requests spread over them, stacked
   forwards (stack_members=12, the default) vs one forward per member (0), A B A B; and in-process, one
   thread, M forwards vs one vmap forward (benchmarks/families_micro.py), which sets the knobs' defaults.
6. In-process: binding (own shallow copy vs swapping tensors under a lock; functional graph vs
   functional_call) and a tiny member's load (map + bind vs torch.jit.load).

Run: ``python -m benchmarks.families [--quick]`` or ``fleet bench --only families``; results in
docs/benchmarks-families.md (its own sections; another helper's section of that file is kept) and
results/families.json. Models are generated once into ~/.cache/triton-fleet/families.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from benchmarks import families_micro as micro
from benchmarks.families_report import write_doc
from benchmarks.real_size import _signature_name, environment, metric, percentile, request_inputs, stub_process
from fleet.settings import DevelopmentSettings
from fleet.triton_server import TritonServer
from model_repository.contract import request_parameters
from model_repository.generator import example_inputs
from model_repository.manifest import Manifest, ModelEntry
from model_repository.packing import add_families, install_runtime, program_file, split_members

ROOT = Path(__file__).resolve().parents[1]
CACHE = DevelopmentSettings.from_env().families_cache
MIB = 2**20


@dataclass(frozen=True)
class FamiliesConfig:
    mode: str = "full"
    big: str = "bert-base"  # the family of phases 1-3
    cold_members: int = 12
    whole_cold_members: int = 3  # today's path, for comparison
    quiet_seconds: float = 10.0  # each of the two quiet windows of phase 2
    zoo: dict = field(default_factory=lambda: {"tiny": 120, "bert-mini": 40, "bert-small": 4, "resnet50": 2,
                                               "bert-base": 6})
    zoo_budget: int = 900 * MIB
    zoo_seconds: float = 30.0  # per run; two runs per path, alternating
    in_flight: int = 16
    zipf_s: float = 1.1
    stack_members: int = 32
    stack_kinds: tuple[str, ...] = ("tiny", "bert-mini")
    stack_seconds: float = 8.0
    stack_knob: int = 12  # the server's stack_members in the stacked runs (the shipped default), vs 0
    micro_rounds: int = 5
    seed: int = 0


FULL = FamiliesConfig()
QUICK = FamiliesConfig(mode="quick", big="bert-mini", cold_members=6, whole_cold_members=2, quiet_seconds=4.0,
                       zoo={"tiny": 40, "bert-mini": 18, "bert-small": 2}, zoo_budget=192 * MIB, zoo_seconds=10.0,
                       stack_members=16, stack_seconds=3.0, micro_rounds=3)


# ---- models ------------------------------------------------------------------------------------------
def family(kind: str, count: int, seed: int = 0, fine_tunes: bool = True, fmt: str = "torchscript"
           ) -> tuple[Path, Manifest, dict]:
    """`count` models of `kind` (fine-tunes of one base unless told otherwise), generated once into the
    cache, with their splits (program + weights, model_repository.packing.split_members)."""
    from model_repository.generator import generate_profile as generate

    suffix = f"-s{seed}{'-family' if fine_tunes else ''}{'-pt2' if fmt != 'torchscript' else ''}"
    folder = _cached(kind, count, suffix)
    if not (folder / "manifest.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"generating {count} {kind} models into {folder} (cached for later runs)", flush=True)
        generate(tmp, count, kind, seed, fmt=fmt, family=fine_tunes)
        tmp.rename(folder)
    manifest = Manifest.read(folder)
    manifest = manifest.model_copy(update={"models": manifest.models[:count]})  # a larger cached set's first ones
    return folder, manifest, split_members(folder, manifest.models)


def _cached(kind: str, count: int, suffix: str) -> Path:
    """The smallest cached folder of at least `count` such models (its first ones serve), else a new one's."""
    best: tuple[int, Path] | None = None
    for path in CACHE.glob(f"{kind}-*{suffix}"):
        size = path.name[len(kind) + 1:len(path.name) - len(suffix)]
        if size.isdigit() and int(size) >= count and (path / "manifest.json").exists():
            if best is None or int(size) < best[0]:
                best = (int(size), path)
    return best[1] if best else CACHE / f"{kind}-{count}{suffix}"


# ---- packs -------------------------------------------------------------------------------------------
def write_pack(repository: Path, name: str, members: list[tuple[Path, ModelEntry, object]], budget: int,
               families: bool, **parameters: str) -> dict[str, ModelEntry]:
    """A pack of members of any signatures (each distinct input signature an optional pack input), as whole
    artifacts or, with `families`, as weights files plus one program per architecture."""
    version = repository / name / "1"
    (version / "members").mkdir(parents=True)
    (version / "programs").mkdir()
    install_runtime(version)
    document, inputs, split, architectures = {}, {}, {}, {}
    for folder, entry, done in members:
        as_family = families and done is not None and done.split.ok
        source = done.weights if as_family else folder / entry.file
        target = version / "members" / (f"{entry.id}.safetensors" if as_family else Path(entry.file).name)
        _link(source, target)
        names = [_signature_name(entry, k) for k in range(len(entry.inputs))]
        for input_name, spec in zip(names, entry.inputs, strict=True):
            inputs[input_name] = (spec.dtype, spec.shape[1:])
        document[entry.id] = {
            "file": f"members/{target.name}", "format": entry.format, "sha256": entry.sha256, "bytes": entry.bytes,
            "inputs": [{"name": n, "dtype": s.dtype, "shape": s.shape,
                        **({"value_range": list(s.value_range)} if s.value_range else {})}
                       for n, s in zip(names, entry.inputs, strict=True)],
            "outputs": [{"name": "OUTPUT__0", "dtype": o.dtype, "shape": o.shape} for o in entry.outputs[:1]]}
        if as_family:
            split[entry.id] = {"architecture": done.architecture, "sha256": done.weights_sha256,
                               "bytes": done.weights_bytes}
            if done.architecture not in architectures:
                relative = program_file(done.architecture, done.split_format)
                _link(done.program, version / relative)
                architectures[done.architecture] = {"format": done.split_format, "tensors": done.split.spec,
                                                    "program": {"path": relative, "sha256": done.program_sha256,
                                                                "bytes": done.program.stat().st_size}}
    (version / "members.json").write_text(json.dumps(add_families({"generation": 1, "members": document}, split,
                                                                  architectures)))
    lines = [f'name: "{name}"', 'backend: "python"', "max_batch_size: 64",
             "dynamic_batching { max_queue_delay_microseconds: 500 }", "instance_group { kind: KIND_CPU count: 1 }",
             'output { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [-1] }']
    for input_name, (dtype, dims) in inputs.items():
        lines.append(f'input {{ name: "{input_name}" data_type: TYPE_{dtype} dims: {list(dims)} optional: true }}')
    for key, value in {"family": "cpu", "torch_threads": "1", "max_resident_bytes": str(budget),
                       **parameters}.items():
        lines.append(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}')
    (version.parent / "config.pbtxt").write_text("\n".join(lines) + "\n")
    return {entry.id: entry for _, entry, _ in members}


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class HotClient:
    """One client asking the hot member over and over; latencies with their start times."""

    def __init__(self, url: str, pack: str, entry: ModelEntry) -> None:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url)
        self.pack, self.entry, self.inputs = pack, entry, request_inputs(entry)
        self.samples: list[tuple[float, float, float]] = []  # (start, end, ms)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            self.client.infer(self.pack, self.inputs, parameters=request_parameters(self.entry.id))
            ended = time.perf_counter()
            self.samples.append((started, ended, (ended - started) * 1e3))

    def between(self, windows: list[tuple[float, float]], exclude: list[tuple[float, float]] = ()) -> list[float]:
        """Latencies of the requests that overlapped any of `windows` and none of `exclude`."""
        def overlaps(start: float, end: float, spans) -> bool:
            return any(start < b and end > a for a, b in spans)
        return [ms for start, end, ms in self.samples if overlaps(start, end, windows)
                and not overlaps(start, end, exclude)]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        self.client.close()


# ---- 1-3. cold loads, the hot member's p99, RSS per member ----------------------------------------------
def cold_family(config: FamiliesConfig, work: Path) -> dict:
    import torch
    import tritonclient.grpc as grpcclient

    folder, manifest, splits = family(config.big, config.cold_members + 1, config.seed)
    entries = manifest.models
    hot, cold = entries[0], entries[1:]
    weights = max(splits[e.id].weights_bytes for e in entries)
    results = {}
    for path_name, families, members in (("family", True, cold), ("whole", False, cold[:config.whole_cold_members])):
        repository = work / f"cold-{path_name}"
        budget = int((len(members) + 1) * weights * 2.2) + 256 * MIB
        write_pack(repository, "cold", [(folder, e, splits[e.id]) for e in [hot, *members]], budget, families,
                   preload=hot.id)
        with TritonServer(repository, load_models=("cold",)) as server:
            stub = stub_process(server, "cold")
            client = grpcclient.InferenceServerClient(server.grpc_url)
            hot_client = HotClient(server.grpc_url, "cold", hot)
            for _ in range(3):  # warm: TorchScript's first calls profile and optimise
                client.infer("cold", request_inputs(hot), parameters=request_parameters(hot.id))
            rss_start = stub.memory_info().rss
            hot_client.thread.start()
            torch.set_num_threads(1)
            rows, loading, quiet, baselines, neighbour = [], [], [], [], []
            halves = (members[:len(members) // 2], members[len(members) // 2:]) if path_name == "family" else (members,)
            for half in halves:
                begin = time.perf_counter()
                time.sleep(config.quiet_seconds)
                quiet.append((begin, time.perf_counter()))
                for entry in half:
                    whole, weights_path = folder / entry.file, splits[entry.id].weights
                    whole.read_bytes()
                    weights_path.read_bytes()  # both files in the page cache, as for the server's load
                    started = time.perf_counter()
                    torch.jit.load(str(whole))
                    jit_s = time.perf_counter() - started
                    begin_read = time.perf_counter()
                    weights_path.read_bytes()
                    read_s = time.perf_counter() - begin_read
                    baselines.append((started, time.perf_counter()))  # this process's GIL: not the stub's
                    inputs = request_inputs(entry)
                    started = time.perf_counter()
                    client.infer("cold", inputs, parameters=request_parameters(entry.id))
                    first = time.perf_counter()
                    loading.append((started, first))  # the load: the second request is any warm request
                    client.infer("cold", inputs, parameters=request_parameters(entry.id))
                    second = time.perf_counter()
                    neighbour.append((first, second))  # a warm request of another member of the architecture
                    rows.append({"member": entry.id, "first_s": first - started, "second_s": second - first,
                                 "overhead_s": (first - started) - (second - first), "jit_load_s": jit_s,
                                 "read_weights_s": read_s, "rss_mib": stub.memory_info().rss / MIB})
            for row in rows:  # the stub's own timing of each load (mapping and binding, or torch.jit.load)
                row["stub_load_s"] = metric(server, "fleet_member_load_seconds_total", "cold", row["member"])
            hot_client.close()
            program_bytes = metric(server, "fleet_pack_program_bytes", "cold")
            loads = metric(server, "fleet_pack_loads_total", "cold")
            client.close()
        overhead = statistics.median(r["overhead_s"] for r in rows)
        stub_load = statistics.median(r["stub_load_s"] for r in rows)
        jit = statistics.median(r["jit_load_s"] for r in rows)
        read = statistics.median(r["read_weights_s"] for r in rows)
        growth = [b["rss_mib"] - a["rss_mib"] for a, b in zip(rows, rows[1:], strict=False)]
        results[path_name] = {
            "members": len(rows), "weights_mib": weights / MIB, "artifact_mib": hot.bytes / MIB, "rows": rows,
            "overhead_s": overhead, "jit_load_s": jit, "read_weights_s": read,
            "overhead_over_jit_load": overhead / jit, "overhead_over_read": overhead / read,
            "stub_load_s": stub_load, "stub_load_over_jit_load": stub_load / jit,
            "stub_load_over_read": stub_load / read,
            "loads": loads, "program_mib": program_bytes / MIB, "rss_start_mib": rss_start / MIB,
            "rss_growth_per_member_mib": statistics.median(growth) if growth else None,
            "rss_growth_per_member_over_weights": (statistics.median(growth) * MIB / weights) if growth else None,
            "hot_quiet": _stats(hot_client.between(quiet, baselines)),
            "hot_loading": _stats(hot_client.between(loading, baselines)),
            "hot_warm_neighbour": _stats(hot_client.between(neighbour, baselines))}
        r = results[path_name]
        r["hot_p99_ratio"] = r["hot_loading"]["p99_ms"] / r["hot_quiet"]["p99_ms"] if quiet else None
        print(f"cold {config.big} ({path_name}): stub load {stub_load * 1e3:.0f} ms; "
              f"load overhead {overhead * 1e3:.0f} ms vs jit.load {jit * 1e3:.0f} ms "
              f"({r['overhead_over_jit_load']:.2f}x) and read {read * 1e3:.0f} ms ({r['overhead_over_read']:.2f}x); "
              f"hot p99 {r['hot_loading']['p99_ms']:.0f} vs quiet {r['hot_quiet']['p99_ms']:.0f} ms; RSS +"
              f"{r['rss_growth_per_member_mib'] or 0:.0f} MiB per member", flush=True)
    return results


def _stats(latencies: list[float]) -> dict:
    return {"requests": len(latencies), "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies) if latencies else None}


# ---- 4. the mixed zoo over budget --------------------------------------------------------------------
def zoo(config: FamiliesConfig, work: Path) -> dict:
    members = []
    for kind, count in config.zoo.items():
        folder, manifest, splits = family(kind, count, config.seed, fine_tunes=kind != "tiny")
        members += [(folder, m, splits[m.id]) for m in manifest.models]
    total = sum(m.bytes for _, m, _ in members)
    rng = np.random.default_rng(11)
    ranked = [m.id for _, m, _ in members]
    rng.shuffle(ranked)  # which member is popular is independent of its size
    weights = 1.0 / np.arange(1, len(ranked) + 1) ** config.zipf_s
    sequence = rng.choice(len(ranked), size=200_000, p=weights / weights.sum())
    runs = []
    for round_ in range(2):
        for path_name in ("whole", "family"):
            repository = work / f"zoo-{path_name}-{round_}"
            by_id = write_pack(repository, "zoo", members, config.zoo_budget, path_name == "family",
                               stack_members="0")
            with TritonServer(repository, load_models=("zoo",)) as server:
                latencies, codes, seconds = asyncio.run(_drive(server.grpc_url, by_id, ranked, sequence, config,
                                                               config.zoo_seconds))
                hits = metric(server, "fleet_pack_hits_total", "zoo")
                misses = metric(server, "fleet_pack_misses_total", "zoo")
                loads = metric(server, "fleet_pack_loads_total", "zoo")
                load_s = metric(server, "fleet_pack_load_seconds_total", "zoo")
                compute_s = metric(server, "fleet_member_compute_duration_us_total", "zoo") / 1e6
            runs.append({"path": path_name, "round": round_, "seconds": seconds, "ok": len(latencies),
                         "load_seconds": load_s, "compute_seconds": compute_s,
                         "errors": codes, "rps": len(latencies) / seconds, "p50_ms": percentile(latencies, 50),
                         "p99_ms": percentile(latencies, 99), "loads": loads,
                         "hit_rate": hits / (hits + misses) if hits + misses else None})
            print(f"zoo {path_name} #{round_}: {runs[-1]['rps']:.1f} rps, p99 {runs[-1]['p99_ms']:.0f} ms, hit "
                  f"rate {runs[-1]['hit_rate']}, {int(loads)} loads, errors {codes}", flush=True)
    by_path = {p: [r for r in runs if r["path"] == p] for p in ("whole", "family")}
    rps = {p: statistics.mean(r["rps"] for r in rs) for p, rs in by_path.items()}
    p99 = {p: statistics.mean(r["p99_ms"] for r in rs) for p, rs in by_path.items()}
    return {"members": len(members), "kinds": config.zoo, "zoo_mib": total / MIB, "budget_mib": config.zoo_budget / MIB,
            "over_budget": total / config.zoo_budget, "runs": runs, "rps": rps, "p99_ms": p99,
            "rps_ratio": rps["family"] / rps["whole"], "p99_ratio": p99["family"] / p99["whole"]}


async def _drive(url: str, by_id: dict[str, ModelEntry], ranked: list[str], sequence, config: FamiliesConfig,
                 seconds_total: float) -> tuple[list[float], dict[str, int], float]:
    import tritonclient.grpc.aio as aioclient
    from tritonclient.utils import InferenceServerException

    client = aioclient.InferenceServerClient(url)
    inputs = {ident: request_inputs(entry) for ident, entry in by_id.items()}
    latencies: list[float] = []
    codes: dict[str, int] = {}
    position = 0
    deadline = time.monotonic() + seconds_total

    async def worker() -> None:
        nonlocal position
        while time.monotonic() < deadline:
            ident = ranked[int(sequence[position % len(sequence)])]
            position += 1
            started = time.perf_counter()
            try:
                await client.infer("zoo", inputs[ident], parameters=request_parameters(ident), client_timeout=120)
                latencies.append((time.perf_counter() - started) * 1e3)
            except InferenceServerException as error:
                code = str(error.status()).rsplit(".", 1)[-1]
                codes[code] = codes.get(code, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(config.in_flight)))
    seconds = time.monotonic() - started
    await client.close()
    return latencies, codes, seconds


# ---- 5. batches across members ----------------------------------------------------------------------
def stacked(config: FamiliesConfig, work: Path) -> dict:
    import torch

    results = {}
    for kind in config.stack_kinds:
        folder, manifest, splits = family(kind, config.stack_members, config.seed)
        entries = manifest.models
        members = [(folder, e, splits[e.id]) for e in entries]
        ranked = [e.id for e in entries]
        sequence = np.arange(100_000) % len(ranked)  # spread evenly over the members
        torch.set_num_threads(1)
        make = _maker(entries[0])
        in_process = micro.stacking([splits[e.id] for e in entries], make, config.micro_rounds)
        runs = []
        for round_ in range(2):
            for knob in (str(config.stack_knob), "0"):
                repository = work / f"stack-{kind}-{knob}-{round_}"
                by_id = write_pack(repository, "zoo", members, 4 * 2**30, True, stack_members=knob,
                                   stack_max_member_bytes=str(2**31))
                with TritonServer(repository, load_models=("zoo",)) as server:
                    asyncio.run(_drive(server.grpc_url, by_id, ranked, sequence, replace(
                        config, in_flight=len(ranked)), 5.0))  # every member resident, executors warm
                    latencies, codes, seconds = asyncio.run(_drive(server.grpc_url, by_id, ranked, sequence,
                                                                   replace(config, in_flight=len(ranked)),
                                                                   config.stack_seconds))
                    stacked_members = metric(server, "fleet_pack_stacked_members_total", "zoo")
                runs.append({"stack_members": int(knob), "round": round_, "rps": len(latencies) / seconds,
                             "p99_ms": percentile(latencies, 99), "errors": codes, "stacked_members": stacked_members})
        rps = {knob: statistics.mean(r["rps"] for r in runs if r["stack_members"] == knob)
               for knob in (config.stack_knob, 0)}
        results[kind] = {"members": len(entries), "in_process": in_process, "runs": runs,
                         "rps": {"stacked": rps[config.stack_knob], "alone": rps[0]},
                         "server_ratio": rps[config.stack_knob] / rps[0]}
        print(f"stacked {kind}: in-process {in_process['speedup']:.2f}x ({in_process['loop_ms']:.2f} vs "
              f"{in_process['stacked_ms']:.2f} ms); server {rps[config.stack_knob]:.0f} vs {rps[0]:.0f} rps "
              f"({results[kind]['server_ratio']:.2f}x)", flush=True)
    return results


def _maker(entry: ModelEntry):
    import torch

    def make(k: int):
        return torch.from_numpy(example_inputs(entry, batch=1, seed=k)[0])
    return make


# ---- 6. in-process: binding and tiny loads ------------------------------------------------------------
def in_process(config: FamiliesConfig) -> dict:
    import torch

    torch.set_num_threads(1)
    out = {"binding": []}
    for kind, fmt in (("tiny", "torchscript"), ("bert-mini", "torchscript"), ("bert-mini", "torch_export")):
        folder, manifest, splits = family(kind, 2, config.seed, fmt=fmt)
        entry = manifest.models[1]
        out["binding"].append({"kind": kind, **micro.binding(splits[entry.id], [_maker(entry)(0)],
                                                             config.micro_rounds)})
    folder, manifest, splits = family("tiny", config.stack_members, config.seed)
    out["tiny_loads"] = micro.tiny_loads([folder / e.file for e in manifest.models],
                                         [splits[e.id] for e in manifest.models], config.micro_rounds)
    return out


# ---- run ---------------------------------------------------------------------------------------------
def run(config: FamiliesConfig = FULL, out: Path | None = None, docs: Path | None = None,
        only: set[str] | None = None, previous: dict | None = None) -> dict:
    out = Path(out or ROOT / "results" / "families")
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    results: dict = {"config": asdict(config), "environment": environment(), "load_average": [os.getloadavg()[0]]}
    phases = {"in_process": in_process, "cold": lambda c: cold_family(c, work), "stacked": lambda c: stacked(c, work),
              "zoo": lambda c: zoo(c, work)}
    if previous is not None:  # re-measure only `only`, keep the rest of an earlier run of the same config
        results = {**previous, "environment": environment(), "load_average": [os.getloadavg()[0]],
                   "remeasured": sorted(only), "first_run": previous.get("first_run") or {
                       k: previous[k] for k in ("finished", "seconds", "load_average")}}
    # Generate (or find cached) every model first, so that generation never overlaps a measurement.
    family(config.big, config.cold_members + 1, config.seed)
    for kind, count in config.zoo.items():
        family(kind, count, config.seed, fine_tunes=kind != "tiny")
    for kind in config.stack_kinds:
        family(kind, config.stack_members, config.seed)
    family("tiny", 2, config.seed)
    family("bert-mini", 2, config.seed)
    family("bert-mini", 2, config.seed, fmt="torch_export")
    for name, phase in phases.items():
        if only is None or name in only:
            results[name] = phase(config)
    results["load_average"].append(os.getloadavg()[0])
    results["seconds"] = time.monotonic() - started
    results["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    (out / "families.json").write_text(json.dumps(results, indent=2, default=str))
    if docs is not None:
        write_doc(results, docs)
    shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="BERT-mini instead of BERT-base, shorter phases")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "families")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks-families.md")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--render", type=Path, help="only re-write --doc from a families.json of an earlier run")
    parser.add_argument("--only", help="comma-separated phases to measure again (in_process, cold, stacked, zoo); "
                                       "the others are kept from --merge")
    parser.add_argument("--merge", type=Path, help="the families.json of an earlier run, with the same mode")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        write_doc(results, args.doc)
        return results
    only = set(args.only.split(",")) if args.only else None
    previous = json.loads(args.merge.read_text()) if args.merge else None
    results = run(QUICK if args.quick else FULL, args.out, None if args.no_docs else args.doc, only, previous)
    print(f"wrote {args.out / 'families.json'}" + ("" if args.no_docs else f" and {args.doc}"))
    return results


if __name__ == "__main__":
    main()
