"""Data side of the fleet, measured in one run (real SeaweedFS, real tritonservers, real control plane).

1. Bytes on each server's disk: placement-aware sync (`sync(..., server=NAME)`) of the share the control
   plane's placement gives each server vs the whole repository that every server synced before (the
   baseline, measured in the same run), with and without a disk budget.
2. Failed requests when a server is killed under load, through `fleet.client`: the model's pack on one
   server only (baseline) vs on two (a replica).
3. Seconds for a new server to take its share: its assignment published -> packs on its disk (sync) ->
   loaded in its tritonserver.
4. Seconds for a hot pack to get its extra replica and requests reaching it: traffic through `fleet.client`
   above the (benchmark-sized) hot threshold -> the control plane places a third replica -> loaded ->
   the new server answers requests; then traffic falls -> the extra replica is retired. Baseline, in the
   same run: the same pack loaded by hand into a fresh tritonserver (the load alone, no detection, no
   placement, no client re-resolution).

Run: `python -m benchmarks.fleet_data` (about 7 minutes on 2 cores); writes results/fleet_data.json and
the "## Data side" section of docs/benchmarks-fleet.md (other sections of that file are left alone).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path

from control_plane.assignments import publish_assignment
from control_plane.placement import PackView, PlacementPolicy, ServerView, plan_placement, working_set_bytes
from control_plane.settings import Settings
from fleet import waiting
from fleet.client import FleetClient
from fleet.seaweedfs import SeaweedS3
from fleet.stack import Stack, StackSpec
from fleet.triton_server import TritonServer
from model_repository.generator import example_inputs, generate
from model_repository.manifest import Manifest
from model_repository.packing import build_repository
from model_repository.s3_sync import local_index, sync, upload

TOKEN, ADMIN_KEY = "bench-token", "bench-admin-key"
SECTION = "## Data side"
SERVER_HOST_BUDGET = 8 * 2**30  # what the e2e tests register local servers with


def wait_for(predicate, what: str, timeout_s: float = 180.0):
    return waiting.wait_for(predicate, timeout_s, what=what)


def _bytes(index: dict) -> int:
    return sum(meta["size"] for meta in index.values())


def disk_share(s3: SeaweedS3, root: Path, models: int, servers: int, replicas: int) -> dict:
    """Bytes per server: whole repository (baseline) vs assigned share, without and with a budget."""
    generated = root / "generated"
    generate(models, generated, seed=1)
    repository = root / "repository"
    plans = build_repository(generated, repository, pack_size=10)
    uri = f"s3://bench/{uuid.uuid4().hex[:8]}"
    client = s3.client()
    upload(repository, uri, client)
    whole = _bytes(local_index(repository))
    baseline = sync(uri, root / "whole", client).resident_bytes
    names = [f"server-{k}" for k in range(servers)]
    packs = [plan.name for plan in plans]
    # The control plane's own placement (what its reconciler runs), each server with a local server's
    # default host budget; the assignment is what the reconciler would publish to each server.
    views = [PackView(plan.name, "cpu", working_set_bytes(m.bytes for m in plan.members)) for plan in plans]
    placed = plan_placement([ServerView(name, "cpu", SERVER_HOST_BUDGET) for name in names], views, {},
                            PlacementPolicy(replicas_min=replicas, replicas_max=max(replicas, 4)))
    assignment: dict[str, dict[str, int]] = {name: {} for name in names}
    for pack, holders in placed.assignment.items():
        for name in holders:
            assignment[name][pack] = 1
    settings = Settings(repository_uri=uri)
    budget = int(whole * 0.4)
    rows = []
    for name in names:
        publish_assignment(client, settings, name, assignment[name])
        free = sync(uri, root / name / "unbounded", client, server=name)
        bounded = sync(uri, root / name / "bounded", client, server=name, disk_budget_bytes=budget)
        rows.append({"server": name, "assigned_packs": len(assignment[name]),
                     "bytes_no_budget": free.resident_bytes, "bytes_with_budget": bounded.resident_bytes,
                     "over_budget_packs": len(bounded.over_budget_packs), "fill_seconds": free.fill_seconds})
    return {"models": models, "packs": len(packs), "servers": servers, "replicas": replicas,
            "repository_bytes": whole, "baseline_bytes_per_server": baseline, "budget_bytes": budget,
            "per_server": rows, "uri": uri, "share_of_first": sorted(assignment[names[0]])}


def new_server_share(s3: SeaweedS3, root: Path, uri: str, packs: list[str]) -> dict:
    """A new server: assignment published -> synced -> every pack loaded in a real tritonserver."""
    repo = root / "newcomer" / "repository"
    repo.mkdir(parents=True)
    client = s3.client()
    with TritonServer(repo) as server:
        started = time.monotonic()
        publish_assignment(client, Settings(repository_uri=uri), "newcomer", {p: 1 for p in packs})
        report = sync(uri, repo, client, server="newcomer")
        synced = time.monotonic()
        for pack in packs:
            server.load(pack)
        loaded = time.monotonic()
    return {"packs": len(packs), "bytes": report.resident_bytes, "sync_seconds": round(synced - started, 2),
            "load_seconds": round(loaded - synced, 2), "total_seconds": round(loaded - started, 2)}


def _fleet(s3: SeaweedS3, root: Path, servers: tuple[str, ...], metrics: bool = False, **settings) -> Stack:
    """Servers and a control plane on the run's S3 (fleet/stack.py, as the tests build theirs), one pack per
    model, the servers registered with a local server's default host budget."""
    stack = Stack(StackSpec(root, servers=servers, token=TOKEN, admin_key=ADMIN_KEY, bucket="bench",
                            prefix=f"cp-{uuid.uuid4().hex[:8]}",
                            settings={"reconcile_interval_s": 0.5, "server_dead_after_s": 2, "pack_size": 1,
                                      **settings}), s3=s3).start()
    stack.register_servers(capacity_bytes=SERVER_HOST_BUDGET, metrics=metrics)
    return stack


def get(stack: Stack, path: str) -> dict:
    response = stack.api().get(f"{stack.url}/api/v1{path}", timeout=60)
    response.raise_for_status()
    return response.json()


def _register(stack: Stack, entry, generated: Path) -> dict:
    stack.register(generated, entry).raise_for_status()
    return wait_for(lambda: (b := get(stack, f"/models/{entry.id}"))["status"] == "servable" and b,
                    f"{entry.id} servable")


def _kill_under_load(cp: Stack, model: str, inputs, victim: TritonServer, users: int,
                     after_s: float) -> dict:
    counts = {"ok": 0, "failed": 0}
    latencies: list[float] = []
    errors: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def user() -> None:
        with FleetClient(cp.url, TOKEN, request_timeout_s=5, deadline_s=5) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    client.infer(model, inputs)
                    with lock:
                        counts["ok"] += 1
                        latencies.append(time.monotonic() - started)
                except Exception as error:  # noqa: BLE001  counted and shown
                    with lock:
                        counts["failed"] += 1
                        errors.append(repr(error)[:200])

    threads = [threading.Thread(target=user) for _ in range(users)]
    for thread in threads:
        thread.start()
    wait_for(lambda: counts["ok"] >= 100, "load running", 60)
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait()
    time.sleep(after_s)  # a fixed observation window of the benchmark, not a synchronisation
    stop.set()
    for thread in threads:
        thread.join(30)
    latencies.sort()
    return {"ok": counts["ok"], "failed": counts["failed"], "errors": sorted(set(errors))[:3],
            "max_latency_s": round(latencies[-1], 3) if latencies else None}


def _kill_once(s3: SeaweedS3, base: Path, replicas_min: int, after_s: float, users: int) -> dict:
    generated = base / "generated"
    generate(1, generated, seed=2)
    with _fleet(s3, base, ("triton-a", "triton-b", "triton-c"), replicas_min=replicas_min) as cp:
        entry = Manifest.read(generated).models[0]
        _register(cp, entry, generated)
        model = wait_for(lambda: len((m := get(cp, f"/models/{entry.id}"))["endpoints"]) == replicas_min
                         and m, f"{replicas_min} endpoints")
        holder = model["endpoints"][0]["server"]
        return _kill_under_load(cp, entry.id, example_inputs(entry, batch=1), cp.servers[holder], users, after_s)


def kill_with_and_without_replicas(s3: SeaweedS3, root: Path, after_s: float, users: int) -> dict:
    """The same kill twice, each on a fresh fleet: placement keeping one replica per pack (the baseline,
    FLEET_REPLICAS_MIN=1) and its default of two. (Before placement kept replicas by itself, a second
    replica was added by hand here; once it did, the "one replica" baseline silently had two.)"""
    return {label: _kill_once(s3, root / f"kill-{n}", n, after_s, users)
            for label, n in (("one replica (baseline)", 1), ("two replicas", 2))}


def _served(server: TritonServer, pack: str, member: str) -> float:
    """Requests for this member the server's pack runtime answered (its own per-member counter: the
    control plane's stub probes and config reads never count there)."""
    return server.admin.scrape(timeout_s=5).member_requests.get((pack, member), 0.0)


def hot_pack_replica(s3: SeaweedS3, root: Path, hot_rps: float, cool_rps: float, every_s: float,
                     refresh_after_s: float) -> dict:
    """Seconds from hot traffic to a third replica answering, and from quiet to it being retired."""
    root = root / f"hot-{uuid.uuid4().hex[:6]}"
    generated = root / "generated"
    generate(2, generated, seed=3)
    # failure detection is not measured here (see the e2e test's note): server_dead_after_s 20
    cp = _fleet(s3, root, ("hot-a", "hot-b", "hot-c"), metrics=True, hot_rps_per_replica=hot_rps,
                cool_rps_per_replica=cool_rps, server_dead_after_s=20)
    servers = cp.servers
    try:
        entry = Manifest.read(generated).models[0]
        model = _register(cp, entry, generated)
        pack = model["pack"]
        model = wait_for(lambda: len((m := get(cp, f"/models/{entry.id}"))["endpoints"]) == 2 and m,
                         "two replicas")
        third = next(n for n in servers if n not in {e["server"] for e in model["endpoints"]})

        def placements() -> list[dict]:
            return [p for p in get(cp, "/placements")["items"] if p["pack"] == pack]

        with tempfile.TemporaryDirectory(dir=root) as by_hand:  # baseline: the load alone
            (Path(by_hand) / "repository").mkdir()
            with TritonServer(Path(by_hand) / "repository") as fresh:
                sync(cp.settings.repository_uri, fresh.repository, s3.client())
                started = time.monotonic()
                fresh.load(pack)
                baseline_load = time.monotonic() - started
        inputs = example_inputs(entry, batch=1)
        counts = {"ok": 0, "failed": 0}
        stop, lock = threading.Event(), threading.Lock()

        def user(client: FleetClient) -> None:
            while not stop.is_set():
                try:
                    client.infer(entry.id, inputs)
                    with lock:
                        counts["ok"] += 1
                except Exception:  # noqa: BLE001  counted and shown
                    with lock:
                        counts["failed"] += 1
                stop.wait(every_s)  # pacing the load generator

        client = FleetClient(cp.url, TOKEN, cache_ttl_s=30.0, refresh_after_s=refresh_after_s)
        resolved: list[float] = []  # when the client asked the control plane where the model is
        client.routes.http.hooks["response"].append(lambda *_a, **_k: resolved.append(time.monotonic()))
        threads = [threading.Thread(target=user, args=(client,)) for _ in range(2)]
        started = time.monotonic()
        for thread in threads:
            thread.start()

        def since() -> float:
            return round(time.monotonic() - started, 2)

        wait_for(lambda: any(p["server"] == third for p in placements()), "a third replica placed", 120)
        placed = since()
        wait_for(lambda: any(p["server"] == third and p["state"] == "loaded" and p["loaded_generation"] ==
                             p["generation"] for p in placements()), "the third replica loaded", 120)
        loaded = since()
        wait_for(lambda: _served(servers[third], pack, entry.id) > 0, "a request answered by the third replica", 120)
        answered = since()
        ok_hot = counts["ok"]
        rps = ok_hot / max(answered, 1e-9)
        stop.set()
        for thread in threads:
            thread.join(30)
        quiet = time.monotonic()
        wait_for(lambda: len([p for p in placements() if not p["retiring"]]) == 2 and
                 all(p["state"] == "loaded" for p in placements()), "back to two replicas", 120)
        retired = round(time.monotonic() - quiet, 2)
        client.close()
    finally:
        cp.stop()
    return {"cache_ttl_s": 30.0, "refresh_after_s": refresh_after_s, "hot_rps_per_replica": hot_rps,
            "cool_rps_per_replica": cool_rps,
            "offered_rps": round(rps, 1), "placed_s": placed, "loaded_s": loaded, "answered_s": answered,
            "retired_after_quiet_s": retired, "baseline_load_s": round(baseline_load, 2), "ok": counts["ok"],
            "failed": counts["failed"], "client_resolved_at_s": [round(t - started, 2) for t in resolved]}


def _refresh_label(run: dict) -> str:
    refresh = run.get("refresh_after_s", run["cache_ttl_s"])
    if refresh >= run["cache_ttl_s"]:
        return f"none: {run['cache_ttl_s']:g} s cache (baseline)"
    return f"background after {refresh:g} s (default)"


def render_hot(result: dict) -> list[str]:
    runs = result.get("hot") or []
    lines: list[str] = []
    if runs:
        first = runs[0]
        load = f" (load average {first['loadavg']})" if first.get("loadavg") else ""
        lines += ["### Seconds for a hot pack to get its extra replica, and requests reaching it", "",
                  f"Run {first['date']}{load}. One model (one pack, 2 replicas on 3 servers); `fleet.client` on "
                  f"2 threads at ~{first['offered_rps']:.0f} rps, above 2 x FLEET_HOT_RPS_PER_REPLICA="
                  f"{first['hot_rps_per_replica']:g}; then no traffic (below FLEET_COOL_RPS_PER_REPLICA="
                  f"{first['cool_rps_per_replica']:g}). Seconds from the first request. Baseline: the same pack "
                  "loaded by hand into a fresh tritonserver in the same run (the load alone). A request reaching "
                  "the new replica is read from its pack runtime's per-member counter.", "",
                  "| client route refresh | placed | loaded and verified | first request answered by it "
                  "| baseline load | answered / baseline | quiet -> back to 2 replicas | requests ok / failed |",
                  "|---|---|---|---|---|---|---|---|"]
        for run in runs:
            lines.append(f"| {_refresh_label(run)} | {run['placed_s']} | {run['loaded_s']} | "
                         f"**{run['answered_s']}** | {run['baseline_load_s']} | "
                         f"{run['answered_s'] / run['baseline_load_s']:.1f}x | {run['retired_after_quiet_s']} | "
                         f"{run['ok']} / {run['failed']} |")
        lines += ["", "Reading it: `placed` is the control plane measuring the rate (two scrapes of the servers' "
                  "counters) and planning; `loaded` adds the load and its verification. A client learns of a new "
                  "replica when it refreshes the model's route (in the background once the route is "
                  "`refresh_after_s` old; the baseline row refreshes only when its 30 s cache expires) or when a "
                  "replica fails, so the gap between `loaded` and `answered` is the client's refresh, not the "
                  "fleet.", ""]
    return lines


def render(result: dict) -> str:
    disk, kill, newcomer = result["disk"], result["kill"], result["new_server"]
    whole = disk["repository_bytes"]
    lines = [SECTION, "",
             f"One run of `python -m benchmarks.fleet_data` on {result['machine']} ({result['date']}); real "
             "SeaweedFS, tritonservers and control plane. The disk step places packs with the control plane's own "
             f"placement (`control_plane.placement.plan_placement`, {disk['replicas']} replicas, "
             f"{SERVER_HOST_BUDGET / 2**30:g} GiB host budget per server) and syncs each server's assignment.",
             "", f"### Bytes on each server's disk ({disk['models']} models in {disk['packs']} packs, repository "
             f"{whole:,} B)", "",
             "| server | packs assigned | bytes, whole repository (baseline) | bytes, assigned share | share / "
             f"baseline | bytes, budget {disk['budget_bytes']:,} B | packs over budget |",
             "|---|---|---|---|---|---|---|"]
    shares = [row["bytes_no_budget"] / disk["baseline_bytes_per_server"] for row in disk["per_server"]]
    for row in disk["per_server"]:
        lines.append(f"| {row['server']} | {row['assigned_packs']} | {disk['baseline_bytes_per_server']:,} | "
                     f"{row['bytes_no_budget']:,} | {row['bytes_no_budget'] / disk['baseline_bytes_per_server']:.2f} |"
                     f" {row['bytes_with_budget']:,} | {row['over_budget_packs']} |")
    expected = disk["replicas"] / disk["servers"]
    lines += ["", f"Each server holds {min(shares):.2f}-{max(shares):.2f} of what the whole-repository sync put on "
              f"every server ({disk['replicas']} replicas over {disk['servers']} servers: {expected:.2f} on average "
              "by pack count; packs differ in size). Placement balances host memory (each replica's working set), "
              "not disk bytes: with these small models every pack costs the same working-set floor, so each "
              "server gets the same number of packs whatever their bytes on disk. With the budget, each stays "
              "within it and reports the packs left out.",
              "", f"### Failed requests when the server holding the model is killed (fleet.client, "
              f"{result['users']} threads, client deadline 5 s, {result['after_s']:.0f} s observed after the kill)",
              "", "Each row on a fresh fleet of three servers, the model's pack placed by the control plane with "
              "FLEET_REPLICAS_MIN=1 (the baseline) or 2 (the default).",
              "", "| pack on | requests ok | failed | slowest answer (s) |", "|---|---|---|---|"]
    for label, row in kill.items():
        lines.append(f"| {label} | {row['ok']} | {row['failed']} | {row['max_latency_s']} |")
    for label, row in kill.items():
        if row["errors"]:
            lines.append(f"\n{label}: e.g. `{row['errors'][0]}`")
    lines += ["", "### Seconds for a new server to take its share", "",
              f"{newcomer['packs']} packs ({newcomer['bytes']:,} B): assignment published -> on disk in "
              f"{newcomer['sync_seconds']} s, loaded in {newcomer['load_seconds']} s more; "
              f"**{newcomer['total_seconds']} s** in all (loads one pack after another; each starts a stub that "
              "imports torch). The assignment was published by this benchmark; in the fleet the reconciler's "
              "leader publishes it, which this run does not include.", ""]
    lines += render_hot(result)
    return "\n".join(lines)


def write_section(docs: Path, section: str) -> None:
    text = docs.read_text() if docs.exists() else "# Fleet benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.M | re.S)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
    docs.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=120)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--after-s", type=float, default=10.0)
    parser.add_argument("--hot-rps", type=float, default=5.0, help="FLEET_HOT_RPS_PER_REPLICA for step 4.")
    parser.add_argument("--only-hot", action="store_true", help="Run step 4 only (and keep the rest of the "
                        "saved results in --out, if any).")
    parser.add_argument("--out", type=Path, default=Path("results/fleet_data.json"))
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks-fleet.md"))
    parser.add_argument("--render", type=Path, default=None, help="Measure nothing: re-render a saved JSON.")
    args = parser.parse_args(argv)
    if args.render:
        write_section(args.docs, render(json.loads(args.render.read_text())))
        return 0
    import platform

    with tempfile.TemporaryDirectory(prefix="fleet-data-") as tmp, SeaweedS3(Path(tmp) / "s3") as s3:
        root = Path(tmp)
        s3.create_bucket("bench")
        result = json.loads(args.out.read_text()) if args.only_hot and args.out.exists() else {}
        if not args.only_hot:
            disk = disk_share(s3, root, args.models, args.servers, replicas=2)
            print(json.dumps(disk, indent=1), flush=True)
            newcomer = new_server_share(s3, root, disk["uri"], disk["share_of_first"])
            print(json.dumps(newcomer), flush=True)
            kill = kill_with_and_without_replicas(s3, root, args.after_s, args.users)
            print(json.dumps(kill, indent=1), flush=True)
            result = {"disk": disk, "new_server": newcomer, "kill": kill, "users": args.users,
                      "after_s": args.after_s, "machine": f"{os.cpu_count()} cores, {platform.machine()}",
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        result["hot"] = []
        for refresh in (30.0, 5.0):  # baseline: no background refresh (a 30 s cache); fleet.client's default
            hot = hot_pack_replica(s3, root, args.hot_rps, args.hot_rps / 2.5, every_s=0.05,
                                   refresh_after_s=refresh)
            print(json.dumps(hot), flush=True)
            result["hot"].append({**hot, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                  "loadavg": " ".join(f"{v:.1f}" for v in os.getloadavg())})
    if "disk" not in result:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print("\n".join(render_hot(result)))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    write_section(args.docs, render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
