"""The asyncio gRPC load driver of the data-plane benchmarks: a fixed number of requests in flight over
an order of targets (a Zipf draw, or each once), with latencies and error counts."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from benchmarks.common import BenchmarkError, _progress
from benchmarks.serving import Target
from fleet.triton_server import TritonServer
from model_repository.contract import request_parameters


@dataclass


class DriveResult:
    latencies_s: list[float] = field(default_factory=list)  # successful requests, in completion order
    errors: int = 0
    first_error: str | None = None
    elapsed_s: float = 0.0
    distinct: int = 0

    @property
    def completed(self) -> int:
        return len(self.latencies_s)

    def require_ok(self, what: str) -> DriveResult:
        if self.errors:
            raise BenchmarkError(f"{what}: {self.errors} requests failed, first: {self.first_error}")
        return self


async def _drive(url: str, targets: Sequence[Target], order: Iterable[int], concurrency: int,
                 duration_s: float | None = None, on_done: Callable[[int], None] | None = None
                 ) -> DriveResult:
    """Send requests for targets[order[k]] with `concurrency` in flight, until the order runs out or
    `duration_s` passes. Inputs are built once per target, so the client does little per request."""
    from tritonclient.grpc.aio import InferenceServerClient, InferInput
    from tritonclient.utils import InferenceServerException

    inputs: dict[int, list] = {}

    def inputs_of(index: int) -> list:
        built = inputs.get(index)
        if built is None:
            target = targets[index]
            tensor = InferInput("INPUT__0", list(target.array.shape), target.dtype)
            tensor.set_data_from_numpy(target.array)
            built = inputs[index] = [tensor]
        return built

    result = DriveResult()
    iterator = iter(order)
    client = InferenceServerClient(url)
    started = time.perf_counter()
    deadline = started + duration_s if duration_s is not None else float("inf")

    async def worker() -> None:
        for index in iterator:
            if time.perf_counter() >= deadline:
                return
            target = targets[index]
            request_inputs = inputs_of(index)
            parameters = request_parameters(target.member) if target.member is not None else None
            sent = time.perf_counter()
            try:
                await client.infer(target.model, request_inputs, parameters=parameters)
            except InferenceServerException as error:
                result.errors += 1
                result.first_error = result.first_error or f"{target.model}/{target.member}: {error}"
            else:
                result.latencies_s.append(time.perf_counter() - sent)
            if on_done:
                on_done(1)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        result.elapsed_s = time.perf_counter() - started
        await client.close()
    result.distinct = len(inputs)
    return result


def drive(url: str, targets: Sequence[Target], order: Iterable[int], concurrency: int,
          duration_s: float | None = None, desc: str | None = None, progress: bool = False,
          total: int | None = None) -> DriveResult:
    with _progress(total, desc or "requests", progress and desc is not None, "req") as bar:
        return asyncio.run(_drive(url, targets, order, concurrency, duration_s, bar.update))


def answer_each_once(server: TritonServer, targets: Sequence[Target], concurrency: int, desc: str,
                     progress: bool) -> DriveResult:
    result = drive(server.grpc_url, targets, range(len(targets)), concurrency, desc=desc, progress=progress,
                   total=len(targets))
    return result.require_ok(desc)


def zipf_order(count: int, s: float, length: int, rank_seed: int, draw_seed: int) -> np.ndarray:
    """`length` target indices drawn from a finite Zipf(s) over `count` targets. Ranks are a seeded random
    permutation, so the hot members spread over packs; the same seeds give the same sequence."""
    weights = np.arange(1, count + 1, dtype=np.float64) ** -s
    ranked = np.random.default_rng(rank_seed).permutation(count)
    draws = np.random.default_rng(draw_seed).choice(count, size=length, p=weights / weights.sum())
    return ranked[draws]
