"""Throughput of the hot paths, so that the figures in docs/adfilter.md can be re-run.

* featurisation: ``featurize`` on serialised synthetic requests (best of 3 passes, single thread);
* offline scoring: ``read_lines`` -> ``verdicts`` -> JSON out, i.e. ``fleet adfilter score`` minus the
  OS pipe, with the scorer's batch size and one torch thread;
* Triton: a ``tritonclient.grpc.aio`` driver against a running server, one bid request per call, a
  fixed number in flight (client and server share the machine's cores).
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import time
from pathlib import Path

import torch

from adfilter.features import featurize
from adfilter.scoring import load_model, read_lines, verdicts
from adfilter.synthetic import generate_bid_requests


def run_benchmark(model_dir: Path, n: int, seed: int, batch_size: int = 512) -> dict:
    raws = [json.dumps(r, separators=(",", ":")).encode() for r in generate_bid_requests(n, seed)]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for raw in raws:
            featurize(raw)
        best = min(best, time.perf_counter() - started)

    torch.set_num_threads(1)
    model = load_model(model_dir)
    stdin = b"\n".join(raws) + b"\n"
    started = time.perf_counter()
    sink = io.StringIO()
    for result in verdicts(read_lines(io.BytesIO(stdin)), model, model.threshold, batch_size):
        sink.write(json.dumps(result, separators=(",", ":")) + "\n")
    scoring_s = time.perf_counter() - started
    return {
        "requests": n,
        "mean_request_bytes": round(len(stdin) / n),
        "featurize_us_per_request": round(best / n * 1e6, 2),
        "scorer_requests_per_s": round(n / scoring_s),
        "scorer_batch_size": batch_size,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


async def _drive_triton(url: str, raws: list[bytes], concurrency: int) -> list[float]:
    """Sends every request with ``concurrency`` in flight; returns each request's latency in seconds."""
    import numpy as np
    import tritonclient.grpc.aio as grpcclient

    latencies: list[float] = []
    queue = list(reversed(raws))
    async with grpcclient.InferenceServerClient(url) as client:

        async def worker() -> None:
            while queue:
                tensor = grpcclient.InferInput("BID_REQUEST", [1, 1], "BYTES")
                tensor.set_data_from_numpy(np.array([[queue.pop()]], dtype=object))
                started = time.perf_counter()
                await client.infer("adfilter", [tensor])
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def run_triton_benchmark(url: str, n: int, seed: int, concurrency: int) -> dict:
    """Client-side throughput and latency of a running ``adfilter`` Triton model (gRPC, one row per call)."""
    raws = [json.dumps(r, separators=(",", ":")).encode() for r in generate_bid_requests(n, seed)]
    asyncio.run(_drive_triton(url, raws[: min(200, n)], concurrency))  # warm-up
    started = time.perf_counter()
    latencies = sorted(asyncio.run(_drive_triton(url, raws, concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests": n,
        "concurrency": concurrency,
        "requests_per_s": round(n / elapsed),
        "latency_ms_p50": round(latencies[len(latencies) // 2] * 1e3, 2),
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99)] * 1e3, 2),
        "cpu_count": os.cpu_count(),
    }
