"""docs/benchmarks-families.md from a benchmarks.families run: its sections, with the issue's goals.

The file is shared: another section ("Small-member path vs 1f4cc98") is written by another benchmark. Only
the text between FAMILIES_BEGIN and FAMILIES_END is replaced; whatever else the file holds is kept.
"""
from __future__ import annotations

from pathlib import Path

FAMILIES_BEGIN = "<!-- benchmarks.families: begin -->"
FAMILIES_END = "<!-- benchmarks.families: end -->"
TITLE = "# Benchmarks: architecture families"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def goals(results: dict) -> list[tuple[str, bool | None, str]]:
    """(goal, met, the figures it was judged on), for the doc and the report."""
    cold, zoo, stacked = results["cold"]["family"], results["zoo"], results["stacked"]
    big = results["config"]["big"]
    out = [
        (f"cold {big} member's load overhead <= 0.25x `torch.jit.load(path)` of its file",
         cold["overhead_over_jit_load"] <= 0.25,
         f"{cold['overhead_s'] * 1e3:.0f} ms vs {cold['jit_load_s'] * 1e3:.0f} ms = "
         f"{cold['overhead_over_jit_load']:.2f}x"),
        ("... and <= 1.5x reading its weights file from the page cache", cold["overhead_over_read"] <= 1.5,
         f"{cold['overhead_s'] * 1e3:.0f} ms vs {cold['read_weights_s'] * 1e3:.0f} ms = "
         f"{cold['overhead_over_read']:.2f}x"),
        ("(the stub's own timing of the load alone, mapping and binding: vs torch.jit.load / vs reading)",
         None, f"{cold['stub_load_s'] * 1e3:.0f} ms: {cold['stub_load_over_jit_load']:.2f}x / "
               f"{cold['stub_load_over_read']:.2f}x"),
        (f"hot member's p99 while {cold['members']} {big} members cold-load in its stub <= 1.5x its quiet p99",
         cold["hot_p99_ratio"] <= 1.5 if cold["hot_p99_ratio"] else None,
         f"{cold['hot_loading']['p99_ms']:.0f} vs {cold['hot_quiet']['p99_ms']:.0f} ms = {cold['hot_p99_ratio']:.2f}x"),
        (f"stub RSS growth per resident {big} member <= 1.05x its weight bytes",
         cold["rss_growth_per_member_over_weights"] <= 1.05 if cold["rss_growth_per_member_over_weights"] else None,
         f"{cold['rss_growth_per_member_mib'] or 0:.0f} MiB per member for {cold['weights_mib']:.0f} MiB of weights = "
         f"{cold['rss_growth_per_member_over_weights'] or 0:.2f}x; program once: {cold['program_mib']:.0f} MiB"),
        (f"mixed zoo at {zoo['over_budget']:.1f}x the budget: >= 3x the whole-artifact path's rps",
         zoo["rps_ratio"] >= 3,
         f"{zoo['rps']['family']:.1f} vs {zoo['rps']['whole']:.1f} rps = {zoo['rps_ratio']:.2f}x"),
        ("... and <= 0.3x its p99", zoo["p99_ratio"] <= 0.3,
         f"{zoo['p99_ms']['family']:.0f} vs {zoo['p99_ms']['whole']:.0f} ms = {zoo['p99_ratio']:.2f}x"),
    ]
    if "tiny" in stacked:
        tiny = stacked["tiny"]
        out.append((f"batches across members, {tiny['members']} tiny members on CPU: >= 1.5x the forward throughput "
                    "of one forward per member (one thread, as the issue measured it)",
                    tiny["in_process"]["speedup"] >= 1.5,
                    f"{tiny['in_process']['speedup']:.2f}x in-process; through the server "
                    f"{tiny['rps']['stacked']:.0f} vs {tiny['rps']['alone']:.0f} rps = {tiny['server_ratio']:.2f}x"))
    if "bert-mini" in stacked:
        mini = stacked["bert-mini"]
        out.append((f"... BERT-mini reported ({mini['members']} members)", None,
                    f"server {mini['server_ratio']:.2f}x; in-process {mini['in_process']['speedup']:.2f}x"))
    out.append(("on a GPU >= 4x", None, "no GPU lent to this run (the code path is the same, on CUDA tensors)"))
    return out


def section(results: dict) -> str:
    config, env = results["config"], results["environment"]
    cold, whole = results["cold"]["family"], results["cold"].get("whole")
    first = results.get("first_run") or results
    again = (f" Re-measured on {results['finished']} (load average {results['load_average'][0]:.1f} to "
             f"{results['load_average'][-1]:.1f}): {', '.join(results['remeasured'])}."
             if results.get("remeasured") else "")
    lines = [FAMILIES_BEGIN, "",
             f"Latest `python -m benchmarks.families{' --quick' if config['mode'] == 'quick' else ''}` "
             f"({first['finished']}, {first['seconds']:.0f} s; torch {env['torch']}, {env['cpus']} CPUs shared "
             f"with other jobs, load average {first['load_average'][0]:.1f} at start and "
             f"{first['load_average'][-1]:.1f} at the end).{again} Every ratio is against a baseline measured in "
             "the same run, interleaved with it; absolute times vary between runs.", "", "## Goals (issue 24)", "",
             "| goal | verdict | figures |", "|---|---|---|"]
    lines += [f"| {goal} | {_verdict(met)} | {figures} |" for goal, met, figures in goals(results)]
    lines += ["", f"## 1-3. Cold {config['big']} members, the hot member, memory", "",
              "One pack, the hot member preloaded (so the architecture's program is loaded) and served without "
              "pause from another client; each cold member is asked twice, and right before, in the benchmark's "
              "process, its whole artifact is `torch.jit.load`ed and its weights file read (both files in the "
              "page cache). Overhead = first request - second request; the stub's load = what the runtime timed "
              "for the load itself (mapping and binding; for whole artifacts `torch.jit.load`). Medians over the "
              "members. The hot member's p99 is taken over its requests that overlapped no cold request (quiet), a "
              "cold member's first request (cold loads), or a cold member's second request, an ordinary warm "
              "request of another member of its architecture (warm neighbour); never over the baselines, which run "
              "in the benchmark's own process.", "",
              "| path | members | overhead ms | stub's load ms | torch.jit.load ms | read weights ms | overhead / "
              "jit.load | overhead / read | hot p99 quiet / cold loads / warm neighbour ms | RSS per member MiB | "
              "program MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in (("family", cold), ("whole (today)", whole)):
        if row is None:
            continue
        lines.append(f"| {name} | {row['members']} | {row['overhead_s'] * 1e3:.0f} | "
                     f"{row.get('stub_load_s', float('nan')) * 1e3:.0f} | {row['jit_load_s'] * 1e3:.0f} | "
                     f"{row['read_weights_s'] * 1e3:.0f} | {row['overhead_over_jit_load']:.2f}x | "
                     f"{row['overhead_over_read']:.2f}x | {row['hot_quiet']['p99_ms']:.0f} / "
                     f"{row['hot_loading']['p99_ms']:.0f} / "
                     f"{row.get('hot_warm_neighbour', {}).get('p99_ms', float('nan')):.0f} | "
                     f"{row['rss_growth_per_member_mib'] or 0:.0f} | "
                     f"{row['program_mib']:.0f} |")
    lines += ["", f"Weights per member {cold['weights_mib']:.0f} MiB (artifact {cold['artifact_mib']:.0f} MiB).", ""]
    zoo = results["zoo"]
    lines += ["## 4. Mixed zoo over budget: Zipf s=1.1, 16 in flight, A B A B", "",
              f"{zoo['members']} members ({', '.join(f'{v} {k}' for k, v in zoo['kinds'].items())}; the real-size "
              f"kinds are fine-tunes of one base each, the tiny ones of many layouts), {zoo['zoo_mib']:.0f} MiB = "
              f"{zoo['over_budget']:.1f}x the pack's {zoo['budget_mib']:.0f} MiB budget.", "",
              "| path | round | rps | p50 ms | p99 ms | hit rate | loads | s loading / s in forwards per s | errors |",
              "|---|---|---|---|---|---|---|---|---|"]
    for run in zoo["runs"]:
        hit = f"{run['hit_rate']:.3f}" if run["hit_rate"] is not None else "n/a"
        busy = (f"{run['load_seconds'] / run['seconds']:.2f} / {run['compute_seconds'] / run['seconds']:.2f}"
                if "compute_seconds" in run else "n/a")
        lines.append(f"| {run['path']} | {run['round']} | {run['rps']:.1f} | {run['p50_ms']:.0f} | {run['p99_ms']:.0f} "
                     f"| {hit} | {int(run['loads'])} | {busy} | {run['errors'] or 0} |")
    lines += ["", "## 5. Batches across members", "",
              "| members | in-process loop ms | in-process vmap ms | speedup | server rps stacked / alone | ratio |",
              "|---|---|---|---|---|---|"]
    for kind, row in results["stacked"].items():
        p = row["in_process"]
        lines.append(f"| {row['members']} {kind} ({p['weight_bytes'] / 1024:.0f} KiB each) | {p['loop_ms']:.2f} | "
                     f"{p['stacked_ms']:.2f} | {p['speedup']:.2f}x | {row['rps']['stacked']:.0f} / "
                     f"{row['rps']['alone']:.0f} | {row['server_ratio']:.2f}x |")
    lines += ["", "Server runs: every member resident, requests spread evenly, one request per member in flight; "
              f"stack_members={results['config'].get('stack_knob', 12)} vs 0. In-process: one thread, batch 1 per "
              "member, `pack_stacked.forward` vs one forward each (outputs equal to float rounding, largest difference "
              + ", ".join(f"{k} {v['in_process']['max_abs_difference']:.1e}" for k, v in results["stacked"].items())
              + ").", "", "## 6. In-process: binding and tiny loads", "",
              "| member | format | tensors | bound forward ms | swap under a lock ms | ratio | same outputs |",
              "|---|---|---|---|---|---|---|"]
    for row in results["in_process"]["binding"]:
        lines.append(f"| {row['kind']} | {row['format']} | {row['tensors']} | {row['bound_ms']:.3f} | "
                     f"{row['swapped_ms']:.3f} | {row['ratio_swapped_over_bound']:.2f}x | {row['same_outputs']} |")
    tiny = results["in_process"]["tiny_loads"]
    lines += ["", f"Swap under a lock = {results['in_process']['binding'][0]['other']} for TorchScript, "
              f"{results['in_process']['binding'][-1]['other']} for torch.export. The runtime binds each member "
              "once at load (no lock, thread-safe, nothing swapped per forward).", "",
              f"Tiny member load ({tiny['members']} members): `torch.jit.load(path)` "
              f"{tiny['whole_ms_per_member']:.2f} ms "
              f"vs map + bind {tiny['family_ms_per_member']:.2f} ms ({tiny['ratio_family_over_whole']:.2f}x).", "",
              FAMILIES_END]
    return "\n".join(lines)


def write_doc(results: dict, path: Path) -> None:
    """Replace this benchmark's part of `path` (between the markers), keeping the rest of the file."""
    path = Path(path)
    text = path.read_text() if path.exists() else f"{TITLE}\n\n"
    ours = section(results)
    if FAMILIES_BEGIN in text and FAMILIES_END in text:
        head, rest = text.split(FAMILIES_BEGIN, 1)
        tail = rest.split(FAMILIES_END, 1)[1]
        text = head + ours + tail
    else:
        text = text.rstrip("\n") + "\n\n" + ours + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
