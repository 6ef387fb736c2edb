"""The data-plane benchmark harness measures what it claims: a tiny run on the real tritonserver writes a
complete, self-consistent JSON (numbers positive, contenders alternated, no request failed). Timing values
themselves are not judged here. The tiny run itself happens once, inside the suite harness's run
(tests/benchmarks/test_suite_harness.py, `check_tiny_data_plane_run`)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from benchmarks.data_plane import build_parser, config_from_args
from benchmarks.data_plane_config import FULL, QUICK
from benchmarks.driver import zipf_order


def test_cli_flags_pick_the_mode():
    assert config_from_args(build_parser().parse_args([])) == FULL
    args = build_parser().parse_args(["--quick", "--out", "x", "--seed", "3"])
    assert config_from_args(args) == replace(QUICK, seed=3) and str(args.out) == "x"
    assert QUICK.cold_members >= 200 and FULL.cold_members >= 200 and FULL.zipf_models == 1000


def test_zipf_order_is_seeded_skewed_and_in_range():
    order = zipf_order(100, 1.1, 20_000, rank_seed=0, draw_seed=1)
    assert np.array_equal(order, zipf_order(100, 1.1, 20_000, rank_seed=0, draw_seed=1))
    assert order.min() >= 0 and order.max() < 100
    counts = np.bincount(order, minlength=100)
    assert counts.max() > 10 * np.median(counts), "a Zipf(1.1) mix has a few very hot members"
