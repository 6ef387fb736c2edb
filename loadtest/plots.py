"""The report's figures (PNG): latency percentiles against offered load, and throughput per instance type."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402  after the backend is chosen
from matplotlib.ticker import ScalarFormatter  # noqa: E402

from loadtest.analysis import Analysis  # noqa: E402

PERCENTILE_STYLES = (("p50", "p50_ms", ":"), ("p90", "p90_ms", "--"), ("p99", "p99_ms", "-"))
DPI = 120


def latency_vs_load(analysis: Analysis, path: Path, load_unit: str) -> Path:
    figure, axes = plt.subplots(figsize=(8, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, summary in enumerate(analysis.summaries):
        rows = [r for r in analysis.rows if r.run.instance_type == summary.instance_type]
        loads = [r.run.offered_load for r in rows]
        for label, field, style in PERCENTILE_STYLES:
            axes.plot(loads, [getattr(r.run.stat, field) for r in rows], style, marker="o", markersize=3,
                      color=colors[k % len(colors)], label=f"{summary.instance_type} {label}")
    axes.axhline(analysis.slo.p99_ms, color="red", linewidth=1, label=f"SLO p99 {analysis.slo.p99_ms:g} ms")
    axes.set_xlabel(f"offered load ({load_unit})")
    axes.set_ylabel("latency (ms)")
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ScalarFormatter())  # 60, not 6x10^1
    axes.set_title("Latency percentiles vs offered load")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def throughput_per_instance(analysis: Analysis, path: Path) -> Path:
    names = [s.instance_type for s in analysis.summaries]
    peak = [s.peak_rps for s in analysis.summaries]
    within = [s.best.run.stat.rps if s.best else 0.0 for s in analysis.summaries]
    figure, axes = plt.subplots(figsize=(max(5.0, 1.4 * len(names) + 2), 4.2))
    positions = range(len(names))
    axes.bar([p - 0.2 for p in positions], peak, width=0.4, label="peak (any latency)")
    axes.bar([p + 0.2 for p in positions], within, width=0.4, label=f"within SLO (p99 <= {analysis.slo.p99_ms:g} ms)")
    axes.set_xticks(list(positions), names)
    axes.set_xlim(-0.8, len(names) - 0.2)  # one instance type must not fill the plot with two slabs
    axes.set_ylim(0, max(peak) * 1.25 if max(peak) > 0 else 1)  # room for the legend above the bars
    axes.set_ylabel("requests per second")
    axes.set_title("Throughput per instance type")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path
