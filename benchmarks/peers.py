"""Packs against their peer and their floor, on the same models, cores and client, in one run.

Contenders (all up at the same time, serving the same user models; only one is driven at a time):

* ``packs_grpc``: the packs on the real tritonserver, driven with ``tritonclient.grpc.aio`` (what a fleet
  client uses: binary tensors over gRPC);
* ``packs_http``: the same server through Triton's KServe v2 HTTP/JSON endpoint, driven by the same aiohttp
  client as the FastAPI server: the apples-to-apples HTTP comparison (JSON in, JSON out on both sides);
* ``fastapi_http``: the classic multi-model FastAPI server (``benchmarks.fastapi_baseline``), aiohttp;
* ``floor_grpc``: the floor, Triton with the pack layout and configs but a no-op model.py
  (``benchmarks.floor_model``), driven like ``packs_grpc``. The packs cannot beat it; the gap is the cost of
  the pack runtime and torch.

Every run is a closed loop (``loadtest.raw_driver.closed_loop``: N requests always in flight) over the same
Zipf(s) sequence of models; contenders alternate within each round and the first one rotates between
rounds, so drift on the shared machine hits all alike. Medians over rounds are reported, plus a short
concurrency sweep giving each contender's best rps with p99 within a budget.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import requests

from benchmarks.common import _median, _say
from benchmarks.driver import zipf_order
from benchmarks.pack_runtime import profile as profile_pack_runtime
from benchmarks.serving import Target, build, load_models, make_server, subset, targets_for, tree_cpu_seconds
from benchmarks.torch_limit import torch_batched_limit
from fleet.triton_server import TritonServer, free_port
from loadtest.raw_driver import DriverResult, closed_loop
from model_repository.contract import http_infer_path, request_parameters
from model_repository.packing import PackPlan
from model_repository.triton_config import PackSettings

FLOOR_MODEL = Path(__file__).resolve().with_name("floor_model.py")
CONTENDERS = ("packs_grpc", "floor_grpc", "packs_http", "fastapi_http")
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class PeersConfig:
    """Sizes and durations of the peers phase; suite.QUICK / suite.FULL pick them, tests pass tinier ones."""

    models: int = 1000
    pack_size: int = 100
    concurrency: int = 16
    seconds: float = 10.0  # per run
    warmup_seconds: float = 3.0  # Zipf warm-up per contender, after every model answered once
    rounds: int = 3
    zipf_s: float = 1.1
    sweep_concurrency: tuple[int, ...] = (1, 4, 16, 64)
    sweep_seconds: float = 3.0
    p99_budget_ms: float = 25.0
    contenders: tuple[str, ...] = CONTENDERS
    load_workers: int = 4
    family: str = "cpu"  # "gpu": packs on CUDA (configs/gpu.pbtxt)
    fastapi_device: str = "cpu"
    timeout_s: float = 30.0
    torch_limit_seconds: float = 3.0  # per round: bare torch in the client process, one thread (0: skip)
    profile_requests: int = 3000  # model.py's execute() in-process over the same sequence (0: skip)


# ---- the FastAPI server as a process ------------------------------------------------------------------
@dataclass
class FastAPIServer:
    """``python -m benchmarks.fastapi_baseline`` in its own process group; a context manager."""

    models_dir: Path
    log_path: Path
    device: str = "cpu"
    port: int = field(default_factory=free_port)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # one uvicorn worker per core
    only: str | None = None  # serve one model (the seeds' one-process-per-model design)
    startup_timeout_s: float = 300.0
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FastAPIServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONSAFEPATH="1", OMP_NUM_THREADS="1")
        command = [sys.executable, "-m", "benchmarks.fastapi_baseline", "--models", str(self.models_dir),
                   "--port", str(self.port), "--device", self.device, "--workers", str(self.workers)]
        if self.only is not None:
            command += ["--only", self.only]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"FastAPI baseline exited with {self.process.returncode}; see {self.log_path}")
            with contextlib.suppress(requests.RequestException):
                response = requests.get(f"{self.url}/health", timeout=2)
                if response.status_code == 200:
                    self.health = response.json()
                    self._wait_for_every_worker(deadline)
                    return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"FastAPI baseline not ready after {self.startup_timeout_s:.0f} s; see {self.log_path}")

    def _wait_for_every_worker(self, deadline: float) -> None:
        """Several workers share one socket; the first to answer may be the only one ready. Poll (new
        connections land on any worker) until every worker's pid has answered."""
        seen = {self.health.get("pid")}
        while len(seen) < self.workers and time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                seen.add(requests.get(f"{self.url}/health", timeout=2).json().get("pid"))
            time.sleep(0.1)
        self.health["workers_ready"] = len(seen)

    def stop(self) -> None:
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait)
                return

    def __enter__(self) -> FastAPIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- what a client sends ------------------------------------------------------------------------------
class Sender:
    """One contender's client: ``send(i)`` sends one request for targets[i] and raises on failure;
    calling it sends the next index of the current order (what ``closed_loop`` calls)."""

    order: Iterator[int] = iter(())

    async def send(self, index: int) -> None:
        raise NotImplementedError

    async def __call__(self) -> None:
        await self.send(next(self.order))

    async def close(self) -> None:
        pass


class GrpcSender(Sender):
    """tritonclient.grpc.aio, one channel, inputs built once per target (as loadtest/workload.py does)."""

    def __init__(self, url: str, targets: Sequence[Target], timeout_s: float) -> None:
        from tritonclient.grpc.aio import InferenceServerClient, InferInput

        self._client = InferenceServerClient(url)
        self._targets = targets
        self._timeout_s = timeout_s
        self._inputs = []
        for target in targets:
            tensor = InferInput("INPUT__0", list(target.array.shape), target.dtype)
            tensor.set_data_from_numpy(target.array)
            self._inputs.append([tensor])

    async def send(self, index: int) -> None:
        target = self._targets[index]
        parameters = request_parameters(target.member) if target.member is not None else None
        await self._client.infer(target.model, self._inputs[index], parameters=parameters,
                                 client_timeout=self._timeout_s)

    async def close(self) -> None:
        await self._client.close()


class HttpSender(Sender):
    """aiohttp, one session (keep-alive, up to `connections` sockets), JSON bodies serialised once per
    target; the response is read whole and its status checked (neither side's JSON is parsed)."""

    def __init__(self, urls: Sequence[str], bodies: Sequence[bytes], connections: int, timeout_s: float) -> None:
        self._urls, self._bodies = list(urls), list(bodies)
        self._connections = connections
        self._timeout_s = timeout_s
        self._session = None

    async def _open(self):
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max(1, self._connections)),
                timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        return self._session

    async def send(self, index: int) -> None:
        session = self._session or await self._open()
        async with session.post(self._urls[index], data=self._bodies[index], headers=JSON_HEADERS) as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def fastapi_requests(base_url: str, targets: Sequence[Target]) -> tuple[list[str], list[bytes]]:
    urls = [f"{base_url}/predictions/{t.member or t.model}" for t in targets]
    bodies = [json.dumps({"inputs": t.array.tolist()}).encode() for t in targets]
    return urls, bodies


def triton_http_requests(base_url: str, targets: Sequence[Target]) -> tuple[list[str], list[bytes]]:
    """KServe v2 JSON: the same tensor as ``data`` (row-major), the member as a request parameter."""
    urls, bodies = [], []
    for target in targets:
        urls.append(f"{base_url}{http_infer_path(target.model)}")
        body = {"inputs": [{"name": "INPUT__0", "shape": list(target.array.shape), "datatype": target.dtype,
                            "data": target.array.ravel().tolist()}]}
        if target.member is not None:
            body["parameters"] = request_parameters(target.member)
        bodies.append(json.dumps(body).encode())
    return urls, bodies


# ---- driving ----------------------------------------------------------------------------------------
async def _each_once(sender: Sender, count: int, concurrency: int) -> int:
    """Every target once (loads lazily loaded members, runs TorchScript's first calls); returns failures."""
    indices = iter(range(count))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for index in indices:
            try:
                await sender.send(index)
            except Exception:  # noqa: BLE001  counted and reported by the caller
                failures += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


@dataclass
class Contender:
    name: str
    make_sender: Callable[[int], Sender]  # argument: concurrency (HTTP sockets)
    pid: int  # the server process (its tree's CPU time is measured)
    protocol: str
    server: str


def _measure(contender: Contender, order: Sequence[int], concurrency: int, seconds: float) -> tuple[DriverResult,
                                                                                                     dict]:
    me = psutil.Process()
    server_before, client_before = tree_cpu_seconds(contender.pid), sum(me.cpu_times()[:2])
    machine_before = psutil.cpu_times()

    async def go() -> DriverResult:
        sender = contender.make_sender(concurrency)
        sender.order = itertools.cycle(order)
        try:
            return await closed_loop(sender, concurrency, seconds)
        finally:
            await sender.close()

    result = asyncio.run(go())
    machine = psutil.cpu_times()
    elapsed = result.duration_s or 1.0
    total = (sum(machine) - sum(machine_before)) or 1.0
    idle = (machine.idle + machine.iowait) - (machine_before.idle + machine_before.iowait)
    cpu = {"server_cores": (tree_cpu_seconds(contender.pid) - server_before) / elapsed,
           "client_cores": (sum(me.cpu_times()[:2]) - client_before) / elapsed,
           "machine_busy": 1 - idle / total}
    return result, cpu


def _run_record(name: str, result: DriverResult, cpu: dict, **extra: object) -> dict:
    summary = result.summary()
    return {"contender": name, **extra, "seconds": result.duration_s, "completed": result.successes,
            "failures": result.failures, "errors": summary["errors"], "rps": result.rps,
            "p50_ms": result.percentile_ms(50), "p90_ms": result.percentile_ms(90),
            "p99_ms": result.percentile_ms(99), "cpu": cpu}


def noop_repository(packs_repo: Path, floor_repo: Path) -> None:
    """A copy of the packs repository whose model.py is the no-op floor (same configs and members.json)."""
    shutil.rmtree(floor_repo, ignore_errors=True)
    shutil.copytree(packs_repo, floor_repo, copy_function=os.link)
    for model_py in floor_repo.glob("*/1/model.py"):
        model_py.unlink()
        shutil.copyfile(FLOOR_MODEL, model_py)


@contextlib.contextmanager
def serving(models_dir: Path, work: Path, config: PeersConfig, progress: bool = True
            ) -> Iterator[dict]:
    """Start every contender's server on the same `config.models` models; yields a dict with the
    contenders, targets, plans and the packs server (the load-generator phase reuses it)."""
    source = subset(models_dir, config.models, work / f"subset-peers-{config.models}")
    packs_repo, floor_repo = work / "repos" / "peers-packs", work / "repos" / "peers-floor"
    plans: list[PackPlan] = build(source, packs_repo, config.pack_size, settings=PackSettings())
    noop_repository(packs_repo, floor_repo)
    targets = targets_for(plans, source, 0)
    names = [p.name for p in plans]
    logs = work / "logs"
    wanted = set(config.contenders)
    with contextlib.ExitStack() as stack:
        packs: TritonServer | None = None
        floor: TritonServer | None = None
        if wanted & {"packs_grpc", "packs_http"}:
            packs = make_server(packs_repo, logs, "peers-packs")
            packs.family = config.family
            stack.enter_context(packs)
            load_models(packs, names, config.load_workers, "peers: load packs", progress)
        if "floor_grpc" in wanted:
            floor = stack.enter_context(make_server(floor_repo, logs, "peers-floor"))
            load_models(floor, names, config.load_workers, "peers: load floor", progress)
        fastapi: FastAPIServer | None = None
        if "fastapi_http" in wanted:
            _say(f"peers: starting the FastAPI baseline with {len(targets)} models", progress)
            fastapi = stack.enter_context(FastAPIServer(source, logs / f"fastapi-{time.strftime('%H%M%S')}.log",
                                                        device=config.fastapi_device))
        contenders: dict[str, Contender] = {}
        timeout = config.timeout_s
        if packs is not None:
            url = packs.grpc_url
            contenders["packs_grpc"] = Contender("packs_grpc", lambda _c, u=url: GrpcSender(u, targets, timeout),
                                                 packs.process.pid, "gRPC (tritonclient.grpc.aio)", "tritonserver")
            urls, bodies = triton_http_requests(packs.http_url, targets)
            contenders["packs_http"] = Contender(
                "packs_http", lambda c, u=urls, b=bodies: HttpSender(u, b, c, timeout), packs.process.pid,
                "HTTP/JSON (aiohttp)", "tritonserver")
        if floor is not None:
            url = floor.grpc_url
            contenders["floor_grpc"] = Contender("floor_grpc", lambda _c, u=url: GrpcSender(u, targets, timeout),
                                                 floor.process.pid, "gRPC (tritonclient.grpc.aio)",
                                                 "tritonserver, no-op model.py")
        if fastapi is not None:
            urls, bodies = fastapi_requests(fastapi.url, targets)
            contenders["fastapi_http"] = Contender(
                "fastapi_http", lambda c, u=urls, b=bodies: HttpSender(u, b, c, timeout), fastapi.process.pid,
                "HTTP/JSON (aiohttp)", f"uvicorn + FastAPI, {fastapi.workers} workers (= cores)")
        yield {"contenders": {k: contenders[k] for k in config.contenders if k in contenders},
               "targets": targets, "plans": plans, "packs": packs, "source": source, "packs_repo": packs_repo,
               "fastapi_health": getattr(fastapi, "health", None)}


def measure(served: dict, config: PeersConfig, seed: int = 0, progress: bool = True) -> dict:
    """Warm every contender, then alternate measured runs; returns runs, sweep and medians."""
    contenders: dict[str, Contender] = served["contenders"]
    targets: Sequence[Target] = served["targets"]
    count = len(targets)
    warm_order = zipf_order(count, config.zipf_s, 100_000, seed, seed + 999).tolist()
    warm = {}
    for name, contender in contenders.items():
        _say(f"peers: warming {name} (every model once, then {config.warmup_seconds:g} s of the mix)", progress)

        async def each(c: Contender = contender) -> int:
            sender = c.make_sender(config.concurrency)
            try:
                return await _each_once(sender, count, config.concurrency)
            finally:
                await sender.close()

        failures = asyncio.run(each())
        if failures:
            raise RuntimeError(f"{name}: {failures} of {count} warm-up requests failed")
        result, _ = _measure(contender, warm_order, config.concurrency, config.warmup_seconds)
        warm[name] = {"failures": result.failures, "errors": result.summary()["errors"], "rps": result.rps}

    runs: list[dict] = []
    limits: list[dict] = []
    names = list(contenders)
    for round_ in range(config.rounds):
        order = zipf_order(count, config.zipf_s, 400_000, seed, seed + 1000 + round_).tolist()
        rotated = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in rotated:
            _say(f"peers: round {round_ + 1}/{config.rounds}: {name}, {config.concurrency} in flight, "
                 f"{config.seconds:g} s", progress)
            result, cpu = _measure(contenders[name], order, config.concurrency, config.seconds)
            runs.append(_run_record(name, result, cpu, round=round_, concurrency=config.concurrency))
        if config.torch_limit_seconds > 0 and config.family == "cpu":
            _say(f"peers: round {round_ + 1}/{config.rounds}: bare torch in-process (the limit), 1 thread", progress)
            limits.append(torch_limit(served, order, config.torch_limit_seconds))

    sweep = []
    for level_index, level in enumerate(config.sweep_concurrency):
        order = zipf_order(count, config.zipf_s, 400_000, seed, seed + 2000 + level).tolist()
        rotated = names[level_index % len(names):] + names[:level_index % len(names)]
        for name in rotated:
            _say(f"peers: sweep {level} in flight: {name}", progress)
            result, cpu = _measure(contenders[name], order, level, config.sweep_seconds)
            sweep.append(_run_record(name, result, cpu, concurrency=level))

    runtime = None
    if config.profile_requests > 0 and config.family == "cpu":
        _say(f"peers: pack runtime (model.py execute) in-process, {config.profile_requests} requests", progress)
        order = zipf_order(count, config.zipf_s, 400_000, seed, seed + 1000).tolist()
        runtime = profile_pack_runtime(served["packs_repo"], targets, order, config.profile_requests)

    summary: dict[str, dict] = {}
    for name in names:
        mine = [r for r in runs if r["contender"] == name]
        within = [r for r in sweep if r["contender"] == name and r["failures"] == 0
                  and r["p99_ms"] <= config.p99_budget_ms]
        best = max(within, key=lambda r: r["rps"]) if within else None
        summary[name] = {
            "rps": _median(r["rps"] for r in mine), "p50_ms": _median(r["p50_ms"] for r in mine),
            "p99_ms": _median(r["p99_ms"] for r in mine), "failures": sum(r["failures"] for r in mine),
            "server_cores": _median(r["cpu"]["server_cores"] for r in mine),
            "client_cores": _median(r["cpu"]["client_cores"] for r in mine),
            # CPU time per answer: steadier than rps on a shared machine (other tenants take cores, not work)
            "server_cpu_us_per_request": _median(r["cpu"]["server_cores"] / r["rps"] * 1e6 for r in mine if r["rps"]),
            "client_cpu_us_per_request": _median(r["cpu"]["client_cores"] / r["rps"] * 1e6 for r in mine if r["rps"]),
            "rps_at_p99_budget": best["rps"] if best else 0.0,
            "concurrency_at_p99_budget": best["concurrency"] if best else None,
            "protocol": contenders[name].protocol, "server": contenders[name].server,
        }
    return {"models": count, "packs": len(served["plans"]), "concurrency": config.concurrency,
            "seconds_per_run": config.seconds, "rounds": config.rounds, "zipf_s": config.zipf_s,
            "p99_budget_ms": config.p99_budget_ms, "sweep_concurrency": list(config.sweep_concurrency),
            "family": config.family, "fastapi": served.get("fastapi_health"), "warm": warm, "runs": runs,
            "sweep": sweep, "summary": summary, "ratios": ratios(summary),
            "torch_limit": {"runs": limits, "rps": _median(r["rps"] for r in limits),
                            "us_per_request": _median(r["us_per_request"] for r in limits)} if limits else None,
            "pack_runtime": runtime}


def torch_limit(served: dict, order: Sequence[int], seconds: float) -> dict:
    """The same models and sequence through bare torch in this process on one thread, batch 1 (the models
    are loaded once and kept in `served`)."""
    import torch

    from benchmarks.fastapi_baseline import load_models

    torch.set_num_threads(1)
    if "torch_models" not in served:
        served["torch_models"] = load_models(served["source"])[0]
    return torch_batched_limit(served["source"], served["targets"], order, 1, seconds, "cpu",
                               models=served["torch_models"])


def ratios(summary: dict[str, dict]) -> dict[str, float]:
    """Every ratio the report uses, from the medians (never typed in)."""
    def ratio(a: str, b: str, key: str) -> float:
        if a not in summary or b not in summary or not summary[b][key]:
            return float("nan")
        return summary[a][key] / summary[b][key]

    out = {}
    for packs in ("packs_grpc", "packs_http"):
        out[f"{packs}_over_fastapi_rps"] = ratio(packs, "fastapi_http", "rps")
        out[f"{packs}_over_fastapi_p99"] = ratio(packs, "fastapi_http", "p99_ms")
        out[f"{packs}_over_fastapi_rps_at_budget"] = ratio(packs, "fastapi_http", "rps_at_p99_budget")
        out[f"fastapi_over_{packs}_server_cpu_per_request"] = ratio("fastapi_http", packs, "server_cpu_us_per_request")
    out["packs_grpc_over_floor_rps"] = ratio("packs_grpc", "floor_grpc", "rps")
    out["packs_grpc_over_floor_p99"] = ratio("packs_grpc", "floor_grpc", "p99_ms")
    return out


def zipf_share_of_top(count: int, s: float, top: int = 10) -> float:
    """Share of requests that go to the `top` hottest models under the finite Zipf(s) (for the report)."""
    weights = np.arange(1, count + 1, dtype=np.float64) ** -s
    return float(weights[:top].sum() / weights.sum())
