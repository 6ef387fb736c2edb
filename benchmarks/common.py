"""Small things every benchmark here uses: medians and percentiles, progress lines, the machine's
description and package versions, markdown tables."""
from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

MIB = 2**20
GIB = 2**30
REPO_ROOT = Path(__file__).resolve().parents[1]


class BenchmarkError(RuntimeError):
    """The harness could not measure what it set out to (a request failed, a server did not load)."""


def _median(values: Iterable[float]) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def _percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    if not latencies_s:
        return {"count": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "mean_ms": float("nan"),
                "max_ms": float("nan")}
    array = np.asarray(latencies_s) * 1e3
    p50, p99 = np.percentile(array, [50, 99])
    return {"count": int(array.size), "p50_ms": float(p50), "p99_ms": float(p99),
            "mean_ms": float(array.mean()), "max_ms": float(array.max())}


def _progress(total: int | None, desc: str, enabled: bool, unit: str = "it") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True,
                mininterval=0.5, file=sys.stderr)


def _say(message: str, enabled: bool = True) -> None:
    if enabled:
        tqdm.write(message, file=sys.stderr)


def environment() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = package_versions(("nvidia-pytriton", "torch", "numpy", "tritonclient", "grpcio"))
    return {"cpu_model": cpu, "logical_cpus": os.cpu_count(), "ram_gib": psutil.virtual_memory().total / GIB,
            "kernel": platform.release(), "python": platform.python_version(), "versions": versions}


def package_versions(packages: Iterable[str]) -> dict[str, str]:
    """Installed version of each package, or "not installed"."""
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _markdown(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _display(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)
