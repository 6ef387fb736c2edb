"""`fleet adfilter ...`: synthetic logs, training, offline scoring, benchmark and the Triton model.

torch is imported inside the commands so that `fleet --help` and `fleet adfilter generate` stay fast.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fleet.extras import needs_extra

_COMPACT = (",", ":")


@click.group("adfilter")
def adfilter() -> None:
    """OpenRTB bid-request filter: predict whether the demand partner bids, drop the hopeless requests."""


@adfilter.command()
@click.option("--n", "n", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def generate(n: int, seed: int) -> None:
    """Print N synthetic bid requests as JSON lines (same seed, same requests)."""
    from adfilter.synthetic import iter_bid_requests

    out = sys.stdout
    for request in iter_bid_requests(seed, n):
        out.write(json.dumps(request, separators=_COMPACT) + "\n")


@adfilter.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--rows", type=click.IntRange(min=1000), default=60_000, show_default=True,
              help="synthetic auctions, split 70/15/15 into train/validation/test")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--bid-recall", type=click.FloatRange(0.5, 1.0), default=0.95, show_default=True,
              help="the threshold keeps at least this share of bids (chosen on validation)")
@needs_extra("torch")
def train(out: Path, rows: int, seed: int, epochs: int, bid_recall: float) -> None:
    """Train on synthetic logs; write model.pt, metadata.json, evaluation.json and reliability.png."""
    from adfilter.train import TrainConfig
    from adfilter.train import train as run_training

    config = TrainConfig(rows=rows, seed=seed, epochs=epochs, target_bid_recall=bid_recall)
    metadata = run_training(config, out, progress=lambda line: click.echo(line, err=True))
    click.echo(json.dumps({"out": str(out), "threshold": metadata["threshold"], **metadata["metrics"]},
                          indent=2))


@adfilter.command()
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True)
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="filtered = likelihood < threshold; default: the model's trained threshold")
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@needs_extra("torch")
def score(model_dir: Path, threshold: float | None, batch_size: int) -> None:
    """Score bid requests (JSON lines on stdin): one JSON verdict per line on stdout, same order."""
    import torch

    from adfilter.scoring import load_model, read_lines, verdicts

    torch.set_num_threads(1)  # a 512-row forward pass is far too small to gain from more threads
    model = load_model(model_dir)
    chosen = model.threshold if threshold is None else threshold
    out = sys.stdout
    for result in verdicts(read_lines(sys.stdin.buffer), model, chosen, batch_size):
        out.write(json.dumps(result, separators=_COMPACT) + "\n")
    out.flush()


@adfilter.command()
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True)
@click.option("--n", "n", type=click.IntRange(min=100), default=20_000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@needs_extra("torch")
def bench(model_dir: Path, n: int, seed: int) -> None:
    """Measure featurisation µs/request and offline scorer requests/s on this machine."""
    from adfilter.benchmark import run_benchmark

    click.echo(json.dumps(run_benchmark(model_dir, n, seed), indent=2))


@adfilter.command("bench-triton")
@click.option("--url", default="127.0.0.1:8001", show_default=True, help="gRPC address of tritonserver")
@click.option("--n", "n", type=click.IntRange(min=100), default=5000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True)
@needs_extra("torch")
def bench_triton(url: str, n: int, seed: int, concurrency: int) -> None:
    """Measure requests/s and latency of a running `adfilter` Triton model."""
    from adfilter.benchmark import run_triton_benchmark

    click.echo(json.dumps(run_triton_benchmark(url, n, seed, concurrency), indent=2))


@adfilter.command("build-triton")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True)
@click.option("--out", "repository", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Triton model repository; the model is written to OUT/adfilter")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None)
@click.option("--max-batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=300, show_default=True)
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True)
@needs_extra("torch")
def build_triton(model_dir: Path, repository: Path, threshold: float | None, max_batch_size: int,
                 queue_delay_us: int, instances: int) -> None:
    """Write the Triton Python-backend model `adfilter` (raw JSON in, likelihood out)."""
    from adfilter.triton_repo import TritonSettings, build_triton_model

    settings = TritonSettings(max_batch_size=max_batch_size, max_queue_delay_us=queue_delay_us,
                              instances=instances, threshold=threshold)
    click.echo(str(build_triton_model(model_dir, repository, settings)))
