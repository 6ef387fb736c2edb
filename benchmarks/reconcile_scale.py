"""How a reconcile tick grows with the fleet: servers x packs, from 10 x 100 to 50 x 2,000.

Runs the real Reconciler (real SQLite registry, real HTTP) against simulated Triton servers
(benchmarks/fake_triton.py, one loopback port each) and times, per size:
- the first tick: every pack placed with its replicas and loaded (one load per replica);
- a steady tick: nothing to change, but every loaded replica's stub probed and every server's metrics read;
- a health round (all servers), and the longest health round while the first tick's loads run (the
  health thread must not wait for loads).
The baseline, measured in the same run, is the same reconciler with one worker (work done one server
after another, as the reconciler did before); the ratio is baseline time / concurrent time.

    python -m benchmarks.reconcile_scale                     # 10x100, 20x500, 50x2000; writes docs
    python -m benchmarks.reconcile_scale --sizes 10x100 --no-docs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from control_plane.db import Model, ModelVersion, Pack, Server, make_engine, make_sessionmaker
from control_plane.migrate import upgrade
from control_plane.placement import residency_budget, working_set_bytes
from control_plane.reconciler import Reconciler
from control_plane.settings import Settings
from model_repository.triton_config import PackSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "benchmarks-fleet.md"
PLOT = REPO_ROOT / "docs" / "img" / "reconcile-scale.png"
START, END = "<!-- reconcile-scale:start -->", "<!-- reconcile-scale:end -->"
MEMBERS_PER_PACK = 5
MEMBER_BYTES = [10_000 + m for m in range(MEMBERS_PER_PACK)]
# what the builder writes into each pack's config for these members, so loads need no override
RESIDENT_BYTES = residency_budget(working_set_bytes(MEMBER_BYTES))
SIGNATURE = {"inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, 4]}],
             "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, 2]}]}


@dataclass
class Measurement:
    servers: int
    packs: int
    workers: int
    first_tick_s: float
    steady_tick_s: float
    health_round_s: float
    worst_health_round_during_loads_s: float
    loads: int
    probes: int


class FakeFleet:
    """The fake_triton process for one size; stopped on exit."""

    def __init__(self, servers: int, load_ms: float, workdir: Path):
        self.ports_file = workdir / f"ports-{servers}.json"
        self.ports_file.unlink(missing_ok=True)
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.fake_triton", "--servers", str(servers),
                                         "--ports-file", str(self.ports_file), "--load-ms", str(load_ms),
                                         "--resident-bytes", str(RESIDENT_BYTES)],
                                        cwd=REPO_ROOT, env={**os.environ, "PYTHONSAFEPATH": "1"})
        deadline = time.monotonic() + 60
        while not self.ports_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the fake Triton servers did not start")
            time.sleep(0.05)
        self.ports = json.loads(self.ports_file.read_text())

    def __enter__(self) -> FakeFleet:
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(10)


def populate(sessions, ports: list[int], packs: int) -> None:
    with sessions.begin() as session:
        for k, port in enumerate(ports):
            session.add(Server(name=f"s{k:03d}", family="cpu", http_url=f"http://127.0.0.1:{port}",
                               grpc_url=f"127.0.0.1:{port}", capacity_bytes=1 << 40, healthy=True,
                               metrics_url=f"http://127.0.0.1:{port}/metrics"))
        for p in range(packs):
            name = f"pack-{p:05d}"
            session.add(Pack(name=name, family="cpu", kind="fp32r2-o1", generation=1, built_generation=1))
        session.flush()
        for p in range(packs):
            for m in range(MEMBERS_PER_PACK):
                model = f"m-{p:05d}-{m}"
                session.add(Model(name=model, family="cpu", pack=f"pack-{p:05d}", joined_generation=1))
                session.add(ModelVersion(model=model, version=1, sha256="0" * 64, bytes=MEMBER_BYTES[m],
                                         s3_key=f"artifacts/{model}", signature=SIGNATURE, pack_kind="fp32r2-o1"))


def measure(servers: int, packs: int, workers: int, load_ms: float, workdir: Path) -> Measurement:
    with FakeFleet(servers, load_ms, workdir) as fleet, tempfile.TemporaryDirectory(dir=workdir) as tmp:
        engine = make_engine(f"sqlite:///{tmp}/registry.db")
        upgrade(engine)
        sessions = make_sessionmaker(engine)
        populate(sessions, fleet.ports, packs)
        settings = Settings(api_token="bench", reconcile_workers=workers, stub_probe_interval_s=1e-6,
                            server_dead_after_s=60)
        builder = SimpleNamespace(registry=SimpleNamespace(s3=None), pack_settings=PackSettings(),
                                  ensure_index=lambda: False)
        reconciler = Reconciler(sessions, settings, builder)  # type: ignore[arg-type]
        published: list[str] = []
        reconciler.publish = lambda s3, settings, server, assigned: published.append(server)
        reconciler.check_health()

        started = time.perf_counter()
        reconciler.check_health()
        health_round = time.perf_counter() - started

        worst = [0.0]
        done = threading.Event()

        def health_while_loading() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                reconciler.check_health()
                worst[0] = max(worst[0], time.perf_counter() - t0)
                done.wait(0.2)
        watcher = threading.Thread(target=health_while_loading)
        watcher.start()
        started = time.perf_counter()
        reconciler.tick()
        first = time.perf_counter() - started
        done.set()
        watcher.join()

        with sessions() as session:
            from sqlalchemy import func, select

            from control_plane.db import Placement
            loaded = session.scalar(select(func.count()).select_from(Placement).where(Placement.state == "loaded"))
        started = time.perf_counter()
        reconciler.tick()
        steady = time.perf_counter() - started
        reconciler.pool.shutdown()
        reconciler.health_pool.shutdown()
        engine.dispose()
        return Measurement(servers, packs, workers, round(first, 3), round(steady, 3), round(health_round, 4),
                           round(worst[0], 4), int(loaded or 0), int(loaded or 0))


def table(rows: list[dict]) -> str:
    lines = ["| servers x packs | replicas loaded | first tick: 1 worker | first tick: concurrent | ratio | "
             "steady tick: 1 worker | steady tick: concurrent | ratio | health round | worst health round "
             "during loads |", "|" + "---|" * 10]
    for row in rows:
        base, fast = row["baseline"], row["concurrent"]
        lines.append(
            f"| {row['servers']} x {row['packs']:,} | {fast['loads']:,} | {base['first_tick_s']:.2f} s | "
            f"{fast['first_tick_s']:.2f} s | {base['first_tick_s'] / fast['first_tick_s']:.1f}x | "
            f"{base['steady_tick_s']:.2f} s | {fast['steady_tick_s']:.2f} s | "
            f"{base['steady_tick_s'] / fast['steady_tick_s']:.1f}x | {fast['health_round_s'] * 1000:.0f} ms | "
            f"{fast['worst_health_round_during_loads_s'] * 1000:.0f} ms |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['servers']}x{r['packs']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("first_tick_s", "o-"), ("steady_tick_s", "s-")):
        ax.plot(x, [r["baseline"][key] for r in rows], style, label=f"{key[:-2].replace('_', ' ')}, 1 worker",
                alpha=0.5)
        ax.plot(x, [r["concurrent"][key] for r in rows], style, label=f"{key[:-2].replace('_', ' ')}, concurrent")
    ax.set_xticks(list(x), labels)
    ax.set_yscale("log")
    ax.set_xlabel("servers x packs")
    ax.set_ylabel("seconds (log)")
    ax.set_title("Reconcile tick vs fleet size (simulated servers)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def write_doc(results: dict) -> None:
    section = "\n".join([
        START,
        "## Reconcile tick vs servers x packs",
        "",
        f"Measured {results['date']} with `python -m benchmarks.reconcile_scale` ({results['workers']} workers; "
        f"simulated servers from `benchmarks/fake_triton.py`: readiness/metrics/config ~1 ms, stub probe ~3 ms, "
        f"pack load {results['load_ms']:g} ms — a real pack load takes seconds, so the first tick's absolute time "
        f"grows with it; the ratio is what concurrency buys). {MEMBERS_PER_PACK} members per pack, 2 replicas "
        "each. Baseline: the same reconciler with 1 worker, in the same run. The first tick places every pack "
        "and loads every replica; a steady tick probes every loaded stub and reads every server's metrics.",
        "",
        table(results["rows"]),
        "",
        "![reconcile tick vs fleet size](img/reconcile-scale.png)",
        END,
    ])
    text = DOC.read_text() if DOC.exists() else "# Fleet benchmarks (issue 13)\n\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10x100,20x500,50x2000", help="servers x packs, comma-separated")
    parser.add_argument("--workers", type=int, default=16, help="the concurrent reconciler's pool size")
    parser.add_argument("--load-ms", type=float, default=20.0, help="simulated pack load time")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "reconcile-scale")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks-fleet.md")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "workers": args.workers,
               "load_ms": args.load_ms, "rows": []}
    for size in args.sizes.split(","):
        servers, packs = (int(v) for v in size.lower().split("x"))
        row = {"servers": servers, "packs": packs}
        for key, workers in (("baseline", 1), ("concurrent", args.workers)):
            row[key] = measure(servers, packs, workers, args.load_ms, args.out).__dict__
            print(f"{servers:>3} x {packs:>5} workers {workers:>2}: first {row[key]['first_tick_s']:.2f} s, "
                  f"steady {row[key]['steady_tick_s']:.2f} s, health {row[key]['health_round_s'] * 1000:.0f} ms, "
                  f"worst health during loads {row[key]['worst_health_round_during_loads_s'] * 1000:.0f} ms, "
                  f"{row[key]['loads']} loaded", flush=True)
        results["rows"].append(row)
    (args.out / "reconcile-scale.json").write_text(json.dumps(results, indent=1))
    print(table(results["rows"]))
    if not args.no_docs:
        plot(results["rows"], PLOT)
        write_doc(results)
        print(f"wrote {DOC} and {PLOT}")


if __name__ == "__main__":
    main()
