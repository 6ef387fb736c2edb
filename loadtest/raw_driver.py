"""The ceiling locust is compared against: a plain asyncio ``tritonclient.grpc.aio`` driver.

Two ways to offer load, each for a fixed duration:

* closed loop (``concurrency``): that many requests always in flight, as fast as answers come;
* open loop (``rate``): requests start on a fixed schedule; at most ``concurrency`` are in flight, and a
  request whose slot comes while all are busy starts late (counted). Latency is measured from the
  scheduled start, so a server that falls behind shows it in p99 instead of hiding it (coordinated
  omission).

Two workloads: the pack models with the locust user's mix (``ModelCalls``), and the ad filter's bid
requests at peak rate (``AdfilterCalls``).
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc.aio as aioclient

from loadtest.bid_payloads import FILTERED_NAME, MODEL_NAME, bid_input, requested_outputs
from loadtest.workload import Workload

Call = Callable[[], Awaitable[None]]  # one request; raises on failure
PERCENTILES = (50, 90, 99)
ERROR_KINDS_KEPT = 5


@dataclass
class DriverResult:
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)  # successful requests only
    errors: Counter[str] = field(default_factory=Counter)
    late_starts: int = 0

    @property
    def successes(self) -> int:
        return len(self.latencies_ms)

    @property
    def failures(self) -> int:
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        """Successful requests per second."""
        return self.successes / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict:
        return {"requests": self.successes + self.failures, "failures": self.failures,
                "duration_s": round(self.duration_s, 3), "rps": round(self.rps, 1),
                **{f"p{q}_ms": round(self.percentile_ms(q), 2) for q in PERCENTILES},
                "late_starts": self.late_starts,
                "errors": dict(self.errors.most_common(ERROR_KINDS_KEPT))}


async def _timed(call: Call, started: float, result: DriverResult) -> None:
    try:
        await call()
    except Exception as error:  # noqa: BLE001  every failure is counted, by kind, never raised
        result.errors[f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"] += 1
        return
    result.latencies_ms.append((time.perf_counter() - started) * 1000)


async def closed_loop(call: Call, concurrency: int, duration_s: float) -> DriverResult:
    result = DriverResult(duration_s)
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            await _timed(call, time.perf_counter(), result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.duration_s = time.perf_counter() - start
    return result


async def open_loop(call: Call, rate: float, duration_s: float, max_in_flight: int) -> DriverResult:
    result = DriverResult(duration_s)
    slots = asyncio.Semaphore(max_in_flight)
    tasks: set[asyncio.Task] = set()
    start = time.perf_counter()

    async def one(scheduled: float) -> None:
        try:
            await _timed(call, scheduled, result)
        finally:
            slots.release()

    for i in itertools.count():
        scheduled = start + i / rate
        if scheduled >= start + duration_s:
            break
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if slots.locked():
            result.late_starts += 1
        await slots.acquire()
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    result.duration_s = time.perf_counter() - start
    return result


async def drive(call: Call, concurrency: int, duration_s: float, rate: float | None = None) -> DriverResult:
    """Closed loop with `concurrency` in flight, or open loop at `rate` capped at `concurrency`."""
    if concurrency < 1 or duration_s <= 0:
        raise ValueError("concurrency must be >= 1 and duration > 0")
    if rate is None:
        return await closed_loop(call, concurrency, duration_s)
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    return await open_loop(call, rate, duration_s, concurrency)


class ModelCalls:
    """Requests to pack members drawn from the workload's mix; one client (channel) per server."""

    def __init__(self, workload: Workload, host: str, seed: int, timeout_s: float) -> None:
        self._workload = workload
        self._host = host
        self._sampler = workload.sampler([seed])
        self._timeout_s = timeout_s
        self._clients: dict[str, aioclient.InferenceServerClient] = {}

    def _client(self, address: str) -> aioclient.InferenceServerClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = aioclient.InferenceServerClient(address)
        return client

    async def __call__(self) -> None:
        target = self._workload.targets[self._sampler.next()]
        await self._client(target.model.server or self._host).infer(
            target.model.pack, list(target.inputs), parameters=target.parameters,
            client_timeout=self._timeout_s)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


class AdfilterCalls:
    """Bid requests to the ``adfilter`` model, cycling through pre-serialised bodies."""

    def __init__(self, host: str, bodies: list[bytes], timeout_s: float) -> None:
        if not bodies:
            raise ValueError("at least one bid request is needed")
        self._client = aioclient.InferenceServerClient(host)
        self._inputs = [bid_input(b) for b in bodies]
        self._outputs = requested_outputs()
        self._next = itertools.cycle(range(len(self._inputs)))
        self._timeout_s = timeout_s
        self.filtered = 0
        self.decided = 0

    async def __call__(self) -> None:
        result = await self._client.infer(MODEL_NAME, [self._inputs[next(self._next)]],
                                          outputs=self._outputs, client_timeout=self._timeout_s)
        self.filtered += int(result.as_numpy(FILTERED_NAME)[0, 0])
        self.decided += 1

    async def close(self) -> None:
        await self._client.close()


async def run_models(workload: Workload, host: str, concurrency: int, duration_s: float,
                     rate: float | None = None, seed: int = 0, timeout_s: float = 10.0) -> DriverResult:
    calls = ModelCalls(workload, host, seed, timeout_s)
    try:
        return await drive(calls, concurrency, duration_s, rate)
    finally:
        await calls.close()


async def run_adfilter(host: str, bodies: list[bytes], concurrency: int, duration_s: float,
                       rate: float | None = None, timeout_s: float = 10.0) -> tuple[DriverResult, float]:
    """The driver's result and the share of decided requests that the filter dropped."""
    calls = AdfilterCalls(host, bodies, timeout_s)
    try:
        result = await drive(calls, concurrency, duration_s, rate)
    finally:
        await calls.close()
    return result, (calls.filtered / calls.decided if calls.decided else float("nan"))
