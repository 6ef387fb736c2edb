"""`fleet report`: locust runs -> Markdown + HTML with figures, cost per million inferences, recommendation.

The document is built once as a list of blocks and rendered twice, so the Markdown and the HTML cannot
disagree.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

from loadtest.analysis import Analysis, RunRow, Slo, analyse
from loadtest.plots import latency_vs_load, throughput_per_instance
from loadtest.prices import PriceTable
from loadtest.results import Run
from loadtest.server_counts import read_beside

LATENCY_PNG = "latency_vs_load.png"
THROUGHPUT_PNG = "throughput.png"


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    file: str
    alt: str


Block = Heading | Paragraph | Table | Image


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    figures: tuple[Path, ...]
    analysis: Analysis


def _usd(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "no price"
    return "n/a (0 rps)" if math.isinf(value) else f"${value:.{digits}f}"


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:g}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _load(value: float) -> str:
    return f"{value:g}"


def recommendation_text(analysis: Analysis) -> str:
    best = analysis.recommendation
    slo = f"p99 <= {analysis.slo.p99_ms:g} ms"
    if best is None:
        tried = ", ".join(s.instance_type for s in analysis.summaries)
        return (f"**None.** No run of a priced instance type ({tried}) met the SLO ({slo}, failure ratio <= "
                f"{analysis.slo.max_failure_ratio:g}); try lower offered load or a larger instance.")
    stat = best.best.run.stat
    return (f"**{best.instance_type}**: {stat.rps:,.1f} rps at p99 {stat.p99_ms:g} ms (offered load "
            f"{_load(best.best.run.offered_load)}) costs {_usd(best.cost_per_million)} per million inferences "
            f"at {_usd(best.usd_per_hour, 4)}/hour; the cheapest instance type that meets the SLO ({slo}).")


def _summary_table(analysis: Analysis, load_unit: str) -> Table:
    rows = []
    for s in analysis.summaries:
        stat = s.best.run.stat if s.best else None
        rows.append((s.instance_type, _usd(s.usd_per_hour, 4), f"{s.peak_rps:,.1f}",
                     f"{stat.rps:,.1f}" if stat else "none within SLO", _ms(stat.p99_ms) if stat else "-",
                     _load(s.best.run.offered_load) if s.best else "-", _usd(s.cost_per_million)))
    return Table(("instance type", "USD/hour", "peak rps", "rps within SLO", "p99 ms",
                  f"offered load ({load_unit})", "cost per 1M inferences"), tuple(rows))


def _runs_table(rows: tuple[RunRow, ...], load_unit: str) -> Table:
    return Table(
        ("instance type (priced as)", f"offered load ({load_unit})", "requests", "failures", "rps",
         "p50 ms", "p90 ms", "p99 ms", "meets SLO", "cost per 1M at this rps", "measured on"),
        tuple((r.run.instance_type, _load(r.run.offered_load), f"{r.run.stat.requests:,}",
               f"{r.run.stat.failures:,}", f"{r.run.stat.rps:,.1f}", _ms(r.run.stat.p50_ms),
               _ms(r.run.stat.p90_ms), _ms(r.run.stat.p99_ms), "yes" if r.meets_slo else "no",
               _usd(r.cost_per_million), r.run.measured_on) for r in rows))


def per_server_blocks(rows: tuple[RunRow, ...]) -> list[Block]:
    """Per-task figures (each server's own counter) beside the through-load-balancer figure (locust's)."""
    blocks: list[Block] = []
    for row in rows:
        counts = read_beside(row.run.source)
        if not counts:
            continue
        total = sum(c.requests for c in counts)
        table_rows = [(c.address, f"{c.requests:,}", f"{c.rps:,.1f}",
                       f"{c.requests / total:.0%}" if total else "-", c.error or "") for c in counts]
        table_rows.append(("all servers", f"{total:,}", f"{sum(c.rps for c in counts):,.1f}", "100%", ""))
        blocks += [
            Paragraph(f"`{row.run.source.name}`: locust saw {row.run.stat.rps:,.1f} rps in total at its "
                      f"--host (the load balancer, on ECS/EKS); each server counted these:"),
            Table(("server (metrics address)", "requests", "rps", "share", "note"), tuple(table_rows)),
        ]
        shares = [c.requests / total for c in counts if total and not c.error]
        if shares and max(shares) > 2 / len(shares):
            blocks.append(Paragraph("Unbalanced: one server took more than twice an even share. Behind an "
                                    "NLB that means too few connections (flows); add users or generators."))
    if blocks:
        blocks.insert(0, Heading("Per server (through the load balancer vs each task)"))
    return blocks


def build_blocks(analysis: Analysis, title: str, load_unit: str) -> list[Block]:
    slo = analysis.slo
    blocks: list[Block] = [
        Heading(title, 1),
        Paragraph(f"{_count(len(analysis.rows), 'run')} over {_count(len(analysis.summaries), 'instance type')}. "
                  f"SLO: p99 <= "
                  f"{slo.p99_ms:g} ms with a failure ratio <= {slo.max_failure_ratio:g}. Prices: "
                  f"{analysis.prices.caption}."),
        Paragraph("Each run is priced as the instance type it is tagged with; the 'measured on' column says "
                  "where its numbers really came from. A run measured elsewhere than on its tagged instance "
                  "type prices that machine's throughput at that instance's rate, and only estimates it."),
        Heading("Recommendation"),
        Paragraph(recommendation_text(analysis)),
        Heading("Cost per million inferences"),
        Paragraph("Best run within the SLO per instance type; cost per million = USD/hour / (rps x 3600) "
                  "x 1e6."),
        _summary_table(analysis, load_unit),
    ]
    if analysis.unpriced:
        blocks.append(Paragraph(f"No price for {', '.join(analysis.unpriced)} in the price file: "
                                "shown, never recommended."))
    blocks += [
        Heading("Figures"),
        Image(LATENCY_PNG, "Latency p50/p90/p99 vs offered load"),
        Image(THROUGHPUT_PNG, "Throughput per instance type"),
        Heading("All runs"),
        _runs_table(analysis.rows, load_unit),
        Paragraph("Sources: " + ", ".join(f"`{r.run.source}`" for r in analysis.rows)),
    ]
    return blocks + per_server_blocks(analysis.rows)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Image):
            out.append(f"![{block.alt}]({block.file})")
        else:
            lines = ["| " + " | ".join(block.headers) + " |", "|" + "---|" * len(block.headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    """The little Markdown the paragraphs use: **bold** and `code`."""
    escaped = html.escape(text)
    for marker, tag in (("**", "strong"), ("`", "code")):
        parts = escaped.split(marker)
        escaped = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(parts))
    return escaped


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Image):
            body.append(f'<p><img src="{html.escape(block.file)}" alt="{html.escape(block.alt)}"></p>')
        else:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                           for row in block.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(runs: list[Run], prices: PriceTable, slo: Slo, out: Path, title: str = "Load-test report",
                 load_unit: str = "users") -> ReportFiles:
    """Write OUT/report.md, OUT/report.html and the figures they show."""
    if not runs:
        raise ValueError("a report needs at least one run")
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyse(runs, prices, slo)
    figures = (latency_vs_load(analysis, out / LATENCY_PNG, load_unit),
               throughput_per_instance(analysis, out / THROUGHPUT_PNG))
    blocks = build_blocks(analysis, title, load_unit)
    markdown = out / "report.md"
    markdown.write_text(to_markdown(blocks))
    page = out / "report.html"
    page.write_text(to_html(blocks, title))
    return ReportFiles(markdown, page, figures, analysis)
