"""What sandboxed validation costs per artifact, against loading the same file in-process.

Why: registration validates every artifact in a fresh, limited, network-less process
(control_plane/validation.py). This measures, in one run and on the same files, for both formats and a
small and a ~40 MB model:
- baseline: load from the path + one forward pass in this (warm) process;
- sandboxed: `ArtifactValidator.validate` (fork from a warm fork server, limits, load, forward, verdict);
- naive: a new `python` per artifact that imports torch, loads and runs once (a fresh process without a
  fork server), the design the fork servers replace.
It prints the medians and the ratios to the baseline and writes them to docs/benchmarks-validation.md.

    python -m benchmarks.validation [--repeats 5] [--out docs/benchmarks-validation.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import package_versions
from control_plane.validation import ArtifactValidator

SIZES = {"tiny": 4, "40mb": 3200}  # Linear(features, features): 4*features^2 bytes of weights


def _artifact(directory: Path, features: int, fmt: str) -> Path:
    module = torch.nn.Linear(features, features).eval()
    example = (torch.randn(2, features),)
    if fmt == "torch_export":
        path = directory / f"linear-{features}.pt2"
        batch = torch.export.Dim("batch", max=1024)
        torch.export.save(torch.export.export(module, example, dynamic_shapes=({0: batch},)), str(path))
    else:
        path = directory / f"linear-{features}.pt"
        torch.jit.save(torch.jit.trace(module, example), str(path))
    return path


def _load_and_run(path: Path, fmt: str, features: int) -> None:
    module = torch.export.load(str(path)).module() if fmt == "torch_export" else torch.jit.load(str(path))
    with torch.inference_mode():
        module(torch.randn(2, features))


def _median(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _naive(path: Path, fmt: str, features: int) -> None:
    loader = "torch.export.load(p).module()" if fmt == "torch_export" else "torch.jit.load(p)"
    code = (f"import torch\ntorch.set_num_threads(1)\np = {str(path)!r}\nm = {loader}\n"
            f"m(torch.randn(2, {features}))\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                   env={**os.environ, "PYTHONSAFEPATH": "1"})


def measure(repeats: int) -> list[dict]:
    torch.set_num_threads(1)
    validator = ArtifactValidator(1)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for fmt in ("torchscript", "torch_export"):
            for label, features in SIZES.items():
                path = _artifact(Path(directory), features, fmt)
                signature = {"inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, features]}],
                             "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, features]}]}
                validator.validate(path, fmt, signature)  # waits for the fork server; not timed
                _load_and_run(path, fmt, features)
                baseline = _median(lambda p=path, f=fmt, n=features: _load_and_run(p, f, n), repeats)
                sandboxed = _median(lambda p=path, f=fmt, s=signature: validator.validate(p, f, s), repeats)
                naive = _median(lambda p=path, f=fmt, n=features: _naive(p, f, n), max(2, repeats // 2))
                rows.append({"format": fmt, "model": label, "bytes": path.stat().st_size, "baseline_s": baseline,
                             "sandboxed_s": sandboxed, "naive_s": naive})
    validator.close()
    return rows


def render(rows: list[dict], repeats: int) -> str:
    versions = package_versions(["torch"])
    lines = ["# Artifact validation: sandboxed cost per artifact", "",
             "Written by `python -m benchmarks.validation`; medians of "
             f"{repeats} runs in one process on {platform.machine()} with {os.cpu_count()} cores, "
             f"load average {os.getloadavg()[0]:.1f} at the end, torch {versions['torch']}.", "",
             "- *baseline*: load from the path + one forward, in the benchmark's own warm process;",
             "- *sandboxed*: `ArtifactValidator.validate` (fork, rlimits, load, forward, dtype/shape checks);",
             "- *naive*: a new Python process per artifact that imports torch, loads and runs once.", "",
             "| format | model | bytes | baseline s | sandboxed s | sandboxed / baseline | naive s "
             "| naive / baseline |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['format']} | {row['model']} | {row['bytes']:,} | {row['baseline_s']:.3f} | "
                     f"{row['sandboxed_s']:.3f} | {row['sandboxed_s'] / row['baseline_s']:.1f}x | "
                     f"{row['naive_s']:.2f} | {row['naive_s'] / row['baseline_s']:.1f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks-validation.md"))
    args = parser.parse_args()
    report = render(measure(args.repeats), args.repeats)
    print(report)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
