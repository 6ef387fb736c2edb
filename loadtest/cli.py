"""Click commands of the load-test room: the `loadtest` group (asyncio drivers) and `report`.

Registered in `fleet` by the CLI's owner; `python -m loadtest.cli` runs them without it.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from fleet.settings import ClientSettings
from loadtest.mix import MIXES
from loadtest.sweep import LOCUSTFILES


def _echo_result(summary: dict) -> None:
    click.echo(json.dumps(summary, sort_keys=True))


def _driver_options(concurrency: int) -> list:
    return [
        click.option("--host", required=True, help="Triton gRPC address, host:port."),
        click.option("--concurrency", type=click.IntRange(1), default=concurrency, show_default=True,
                     help="Requests in flight (closed loop), or the cap on them with --rate."),
        click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Open loop: start this many requests per second instead."),
        click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=10.0,
                     show_default=True, help="Seconds."),
        click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=10.0,
                     show_default=True, help="Seconds before a request counts as failed."),
    ]


def _with(options: list):
    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply


@click.group("loadtest")
def loadtest() -> None:
    """Load drivers: asyncio ceilings (raw, adfilter-peak) and locust sweeps with a report (sweep)."""


@loadtest.command("raw")
@_with(_driver_options(16))
@click.option("--models-from", required=True, help="Control-plane URL or a manifest.json (or its folder).")
@click.option("--token", envvar=ClientSettings.env_name("api_token"), default=None, help="Control-plane API token.")
@click.option("--pack-size", type=click.IntRange(1), default=100, show_default=True,
              help="With a manifest: the --pack-size the repository was built with.")
@click.option("--mix", type=click.Choice(MIXES), default="zipf", show_default=True)
@click.option("--zipf-s", type=float, default=1.1, show_default=True)
@click.option("--weights-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV 'id,weight' for --mix file.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=1, show_default=True)
def raw(host: str, concurrency: int, rate: float | None, duration: float, timeout_s: float, models_from: str,
        token: str | None, pack_size: int, mix: str, zipf_s: float, weights_file: Path | None, seed: int,
        batch_size: int) -> None:
    """Pack models with the locust user's mix; prints rps and p50/p90/p99 as JSON."""
    from loadtest.catalogue import CatalogueError, load_catalogue
    from loadtest.mix import MixError
    from loadtest.raw_driver import run_models
    from loadtest.workload import build_workload

    try:
        workload = build_workload(load_catalogue(models_from, pack_size, token), mix, zipf_s, weights_file,
                                  seed, batch_size)
    except (CatalogueError, MixError) as error:
        raise click.ClickException(str(error)) from None
    result = asyncio.run(run_models(workload, host, concurrency, duration, rate, seed, timeout_s))
    _echo_result({"models": len(workload.targets), "mix": mix, "concurrency": concurrency, "rate": rate,
                  **result.summary()})


@loadtest.command("adfilter-peak")
@_with(_driver_options(32))
@click.option("--requests", "count", type=click.IntRange(1), default=2000, show_default=True,
              help="Distinct synthetic bid requests, sent round-robin.")
@click.option("--seed", type=int, default=0, show_default=True)
def adfilter_peak(host: str, concurrency: int, rate: float | None, duration: float, timeout_s: float,
                  count: int, seed: int) -> None:
    """Bid requests to the `adfilter` model at peak (or --rate); prints rps, latency, filtered share."""
    from loadtest.bid_payloads import bid_request_bodies
    from loadtest.raw_driver import run_adfilter

    result, filtered = asyncio.run(run_adfilter(host, bid_request_bodies(count, seed), concurrency, duration,
                                                rate, timeout_s))
    _echo_result({"concurrency": concurrency, "rate": rate, "filtered_share": round(filtered, 4),
                  **result.summary()})


@loadtest.command("sweep")
@click.option("--workload", type=click.Choice(sorted(LOCUSTFILES)), default="models", show_default=True,
              help="models: loadtest/triton_models.py; adfilter: loadtest/bid_requests.py.")
@click.option("--host", required=True, help="Triton gRPC address, host:port.")
@click.option("--users", "users_text", default="4,8,16,32", show_default=True,
              help="Comma-separated locust user counts, one run each, in rising order.")
@click.option("--seconds", type=click.IntRange(5), default=20, show_default=True, help="Length of each run.")
@click.option("--processes", type=click.IntRange(1), default=1, show_default=True,
              help="locust --processes (add some when one locust process is the bottleneck).")
@click.option("--instance-type", required=True, help="Price the runs as this instance type (loadtest/prices.yaml).")
@click.option("--slo-p99-ms", type=click.FloatRange(min=0, min_open=True), default=50.0, show_default=True)
@click.option("--prices", "prices_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Price file (default: loadtest/prices.yaml).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for each run's CSVs and the report.")
@click.argument("locust_args", nargs=-1, type=click.UNPROCESSED)
def sweep(workload: str, host: str, users_text: str, seconds: int, processes: int, instance_type: str,
          slo_p99_ms: float, prices_path: Path | None, out: Path, locust_args: tuple[str, ...]) -> None:
    """Run locust at rising user counts, then write the report (latency vs load, cost per million).

    Arguments after `--` go to the locustfile, e.g. `-- --models-from http://127.0.0.1:8080 --mix zipf`.
    """
    from loadtest.analysis import Slo
    from loadtest.prices import DEFAULT_PRICES, PriceFileError, load_prices
    from loadtest.report import recommendation_text
    from loadtest.sweep import SweepError, SweepPlan, describe, parse_users, run_sweep

    try:
        prices = load_prices(prices_path or DEFAULT_PRICES)
        plan = SweepPlan(workload, host, parse_users(users_text), seconds, instance_type, tuple(locust_args),
                         processes)
        _, files = run_sweep(plan, out, prices, Slo(slo_p99_ms), f"Load sweep: {workload} on {instance_type}",
                             on_point=lambda users, run: click.echo(describe(users, run)))
    except (PriceFileError, SweepError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"wrote {files.markdown}, {files.html} and {len(files.figures)} figures")
    click.echo(recommendation_text(files.analysis).replace("**", ""))


@click.command("report")
@click.option("--run", "runs", multiple=True, required=True, metavar="STATS_CSV:INSTANCE_TYPE:LOAD",
              help="A locust *_stats.csv, the instance type to price it as, and its offered load. Repeat.")
@click.option("--slo-p99-ms", type=click.FloatRange(min=0, min_open=True), required=True,
              help="Latency objective: p99 at or below this.")
@click.option("--max-failure-ratio", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="A run with more failures than this misses the SLO.")
@click.option("--prices", "prices_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Price file (default: loadtest/prices.yaml).")
@click.option("--measured-on", default=None,
              help="Where runs without a PREFIX_run.json were measured (shown beside them).")
@click.option("--load-unit", default="users", show_default=True, help="Unit of the offered load.")
@click.option("--title", default="Load-test report", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for report.md, report.html and the PNG figures.")
def report(runs: tuple[str, ...], slo_p99_ms: float, max_failure_ratio: float, prices_path: Path | None,
           measured_on: str | None, load_unit: str, title: str, out: Path) -> None:
    """Markdown + HTML report: latency vs load, throughput, cost per million, cheapest instance in SLO."""
    from loadtest.analysis import Slo
    from loadtest.prices import DEFAULT_PRICES, PriceFileError, load_prices
    from loadtest.report import recommendation_text, write_report
    from loadtest.results import ResultsError, load_run, parse_run_tag

    try:
        prices = load_prices(prices_path or DEFAULT_PRICES)
        loaded = [load_run(*parse_run_tag(tag), measured_on=measured_on) for tag in runs]
    except (PriceFileError, ResultsError) as error:
        raise click.ClickException(str(error)) from None
    files = write_report(loaded, prices, Slo(slo_p99_ms, max_failure_ratio), out, title, load_unit)
    click.echo(f"wrote {files.markdown}, {files.html} and {len(files.figures)} figures")
    click.echo(recommendation_text(files.analysis).replace("**", ""))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Load-test commands (the same ones `fleet loadtest` and `fleet report` run)."""


main.add_command(loadtest)
main.add_command(report)

if __name__ == "__main__":
    main()
