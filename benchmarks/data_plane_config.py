"""What a data-plane benchmark run measures and at what scale (full, quick), and where it writes."""
from __future__ import annotations

from dataclasses import dataclass

from benchmarks.common import REPO_ROOT

DEFAULT_OUT = REPO_ROOT / "results" / "bench-data-plane"
DEFAULT_DOCS = REPO_ROOT / "docs" / "benchmarks-data-plane.md"
JSON_NAME = "data_plane.json"


@dataclass(frozen=True)


class BenchConfig:
    """Sizes and durations of one run; FULL and QUICK below, tests pass smaller ones."""

    mode: str = "full"
    seed: int = 0
    pack_size: int = 100
    load_workers: int = 4  # parallel load requests (Triton's default model-load thread count is 4)
    concurrency: int = 16  # requests in flight for "every member once" and the Zipf mix
    # 1. memory
    memory_models: int = 200
    dedicated_cap: int = 40
    min_available_gib: float = 4.0
    memory_repeats: int = 2  # packs, dedicated, packs, dedicated, ...
    # 2. time to servable
    servable_models: int = 1000
    servable_repeats: int = 3
    # 3. cold vs warm first request
    cold_members: int = 300
    latency_block: int = 20  # cold block then the same members warm, alternating
    # 4. Zipf mix, dynamic batching A/B
    zipf_models: int = 1000
    zipf_s: float = 1.1
    zipf_seconds: float = 15.0
    zipf_warmup_seconds: float = 3.0
    zipf_pairs: int = 4  # A/B pairs: A B A B ...

FULL = BenchConfig()
QUICK = BenchConfig(mode="quick", memory_models=60, dedicated_cap=10, memory_repeats=1, servable_models=300,
                    servable_repeats=1, cold_members=200, zipf_models=300, zipf_seconds=4.0,
                    zipf_warmup_seconds=1.0, zipf_pairs=2)
