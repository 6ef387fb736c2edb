"""`fleet sync`: a server's repository in step with S3 (model_repository/s3_sync.py). It runs in the server
image, which carries only what the data plane needs: nothing heavier is imported here."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import click
from tqdm import tqdm

from fleet.settings import SyncSettings


@click.command()
@click.argument("uri")
@click.argument("repository", type=click.Path(file_okay=False, path_type=Path))
@click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL_S3", help="Any S3 endpoint (default: AWS).")
@click.option("--interval", type=click.FloatRange(0), default=0, show_default=True,
              help="Seconds between syncs; 0 syncs once and exits (a sidecar uses e.g. 30).")
@click.option("--server", envvar=SyncSettings.env_name("server"), default=None,
              help="Sync only this server's assignment (.fleet/assignments/NAME.json, written by the control "
                   "plane); without it the whole repository is synced.")
@click.option("--disk-budget-bytes", envvar=SyncSettings.env_name("disk_budget_bytes"), type=click.IntRange(0),
              default=None,
              help="Bytes the repository may hold (with --server); default: free disk less 5%.")
@click.option("--triton-metrics-url", envvar=SyncSettings.env_name("triton_metrics_url"), default=None,
              help="e.g. http://127.0.0.1:8002/metrics: packs that get requests count as recently used.")
@click.option("--server-from", "server_from", envvar=SyncSettings.env_name("server_from"),
              type=click.Choice(["ecs-task-metadata"]),
              default=None, help="Derive --server without configuration: ecs-task-metadata reads this task's ARN "
                                 "from $ECS_CONTAINER_METADATA_URI_V4/task and syncs as ecs-<task id>, the name "
                                 "ECS discovery registers.")
@click.option("--allow-unassigned", is_flag=True,
              help="With --server and --interval 0: a server without an assignment yet exits 0 (an init "
                   "container of a pod that is not yet discovered).")
def sync(uri: str, repository: Path, endpoint_url: str | None, interval: float, server: str | None,
         disk_budget_bytes: int | None, triton_metrics_url: str | None, server_from: str | None,
         allow_unassigned: bool) -> None:
    """Bring a local repository in step with S3: incremental, verified, atomic per model.

    Writes REPOSITORY.sync-status.json and REPOSITORY.sync.prom (Prometheus text) next to the repository.
    With a server name, the status also goes to S3 (.fleet/status/NAME.json) for the control plane.
    With --interval, failures (no index, S3 unreachable) are logged and retried with back-off.
    """
    from tenacity import Retrying, retry_if_exception_type, wait_exponential

    from model_repository.s3_sync import NoAssignment, SyncError, UsageTracker, s3_client
    from model_repository.s3_sync import sync as run

    if server_from:
        from model_repository.server_names import ServerNameError, ecs_server_name_from_metadata

        if server:
            raise click.UsageError("give either --server or --server-from, not both")
        try:
            server = ecs_server_name_from_metadata()
        except ServerNameError as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"syncing the share of server {server} (from the ECS task metadata)")
    client = s3_client(endpoint_url)
    usage = UsageTracker(triton_metrics_url)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))

    def pause(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not stop["now"]:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def one_round():
        with tqdm(unit="B", unit_scale=True, desc="sync", dynamic_ncols=True, disable=bool(interval)) as bar:
            report = run(uri, repository, client, on_progress=bar.update, server=server,
                         disk_budget_bytes=disk_budget_bytes, used_at=usage.poll(), publish_status=server is not None)
        click.echo(f"synced {len(report.downloaded)} files ({report.bytes} B); changed models: "
                   f"{sorted(report.changed_models) or 'none'}; removed: {sorted(report.removed_models) or 'none'}"
                   + (f"; {report.resident_packs} packs, {report.resident_bytes} B on disk" if server else ""))
        if report.over_budget_packs:
            click.echo(f"OVER BUDGET: {len(report.over_budget_packs)} assigned packs do not fit in "
                       f"{report.budget_bytes} B and are not on disk: {report.over_budget_packs}", err=True)
        for path, reason in report.refused.items():
            click.echo(f"REFUSED {path}: {reason}", err=True)
        return report

    def explain(state) -> None:
        click.echo(f"sync failed (attempt {state.attempt_number}), retrying in {state.next_action.sleep:.0f} s: "
                   f"{state.outcome.exception()}", err=True)

    while True:
        if not interval:
            try:
                report = one_round()
            except NoAssignment as error:
                if not allow_unassigned:
                    raise click.ClickException(str(error)) from None
                click.echo(f"nothing to sync yet: {error}")
                return
            except SyncError as error:
                raise click.ClickException(str(error)) from None
            if not report.ok:
                raise SystemExit(1)
            return
        retrying = Retrying(retry=retry_if_exception_type(SyncError), before_sleep=explain, sleep=pause,
                            wait=wait_exponential(multiplier=1, min=1, max=max(300.0, interval)),
                            stop=lambda _state: stop["now"], reraise=True)
        try:
            retrying(one_round)
        except SyncError:
            return  # stopped (SIGTERM) while retrying
        pause(interval)
        if stop["now"]:
            return
