"""`fleet logs` and `fleet dashboards`: reading the local stack's logs and rendering the dashboards."""
from __future__ import annotations

import time
from pathlib import Path

import click


@click.command(name="logs")
@click.option("--dir", "state_dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".fleet"),
              show_default=True, help="Where `fleet up` keeps its state and logs.")
@click.option("--source", "sources", multiple=True,
              help="Only these sources (control-plane, triton-a, triton-b, seaweedfs); repeatable.")
@click.option("-n", "--tail", "count", type=click.IntRange(1), default=None, help="Only the last N lines.")
@click.option("--grep", "pattern", default=None, help="Only lines containing this text (e.g. a request id).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they are written.")
@click.option("--raw", is_flag=True, help="Print JSON lines as written instead of level/logger/message.")
def logs_command(state_dir: Path, sources: tuple[str, ...], count: int | None, pattern: str | None, follow: bool,
                 raw: bool) -> None:
    """The local stack's logs (control plane, tritonservers, SeaweedFS) merged in time order."""
    from control_plane.observability.logfiles import merged, read_lines, render, stack_log_files, tail

    files = stack_log_files(state_dir)
    if sources:
        unknown = sorted(set(sources) - set(files))
        if unknown:
            raise click.ClickException(f"no log for {', '.join(unknown)} under {state_dir}; known: "
                                       f"{', '.join(files) or 'none'}")
        files = {name: path for name, path in files.items() if name in sources}
    if not files:
        raise click.ClickException(f"no logs under {state_dir}: start the stack with `fleet up` (make demo), or "
                                   "pass --dir")
    width = max(len(name) for name in files)

    def keep(line) -> bool:
        return pattern is None or pattern in line.text

    for line in tail(filter(keep, merged(files)), count):
        click.echo(render(line, raw, width))
    if not follow:
        return
    seen = {name: sum(1 for _ in open(path, errors="replace")) for name, path in files.items()}
    while True:
        time.sleep(0.5)  # polling a file for new lines; not test synchronisation
        fresh = []
        for name, path in files.items():
            lines = list(read_lines(name, path, start=seen[name]))
            seen[name] = sum(1 for _ in open(path, errors="replace"))
            fresh.extend(filter(keep, lines))
        for line in sorted(fresh):
            click.echo(render(line, raw, width))


@click.group(name="dashboards")
def dashboards_group() -> None:
    """Dashboards and alarms for every target, generated from control_plane/observability/dashboards.py."""


@dashboards_group.command(name="render")
@click.option("--check", is_flag=True, help="Write nothing; fail if a committed file differs from the generated.")
def render_command(check: bool) -> None:
    """Write the Grafana dashboard, the CloudWatch agent config, dashboard and alarms, and the ECS body."""
    from control_plane.observability.dashboards import REPO_ROOT, write

    differing = write(check=check)
    names = ", ".join(str(p.relative_to(REPO_ROOT)) for p in differing)
    if check and differing:
        raise click.ClickException(f"out of date: {names}; run `fleet dashboards render`")
    click.echo(f"{'wrote' if differing else 'up to date'}{': ' + names if differing else ''}")


@dashboards_group.command(name="metrics")
def metrics_command() -> None:
    """Every metric name the dashboards and alarms use (each must be exported somewhere)."""
    from control_plane.observability.dashboards import used_metric_names

    for name in sorted(used_metric_names()):
        click.echo(name)
