"""The `fleet` command: one entry point whose subcommands delegate to the room that owns the work."""
from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import click
from tqdm import tqdm

from fleet.extras import explain_missing_module, needs_extra


class LazyGroup(click.Group):
    """A group whose heavy subcommands are imported only when they run (click's documented lazy pattern).

    Why: `fleet sync` runs in the server image, which carries only what the data plane needs; importing
    the load-test, report or control-plane commands (locust, matplotlib, flask) at start-up would make it
    fail there. `fleet --help` lists them without importing them.
    """

    lazy_commands: dict[str, tuple[str, str, str]] = {
        # name: (module, attribute, short help)
        "adfilter": ("adfilter.cli", "adfilter", "OpenRTB bid-request filter: data, training, scoring, model."),
        "control-plane": ("control_plane.server", "control_plane", "The control plane's REST API and reconciler."),
        "loadtest": ("loadtest.cli", "loadtest", "Run locust load tests against Triton."),
        "report": ("loadtest.cli", "report", "Render a load-test report from saved results."),
        "rehearse": ("deploy.rehearse", "rehearse", "Run every EKS/ECS runbook step that can run here."),
        "logs": ("control_plane.observability.cli", "logs_command", "The local stack's logs merged in time order."),
        "dashboards": ("control_plane.observability.cli", "dashboards_group",
                       "Render the Grafana, CloudWatch and ECS dashboards and alarms."),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_commands])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands:
            module, attribute, _ = self.lazy_commands[name]
            import importlib

            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        # A command without `needs_extra` that still imports torch or tritonserver in a slim install says
        # which extra to install instead of ending in a traceback (fleet/extras.py).
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as error:
            explained = explain_missing_module(error, f"{ctx.command_path} {ctx.invoked_subcommand or ''}".strip())
            if explained is None:
                raise
            raise explained from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self.lazy_commands[name][2] if name in self.lazy_commands
                 else click.Group.get_command(self, ctx, name).get_short_help_str(limit=80))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

# Kept in step with model_repository.profiles.PROFILES (not imported: it pulls torch into every command).
PROFILE_NAMES = ("tiny", "bert-mini", "bert-small", "bert-base", "resnet50", "mixed")


def _progress(total: int, unit: str, desc: str, unit_scale: bool = False) -> tqdm:
    return tqdm(total=total, unit=unit, desc=desc, unit_scale=unit_scale, dynamic_ncols=True)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """Serve thousands of unique PyTorch models on NVIDIA Triton.

    Typical flow: generate -> pack -> upload (S3) -> sync (each server) -> serve.
    `make demo` runs all of it, plus the control plane and a load test.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--models", "count", type=click.IntRange(1), default=1000, show_default=True,
              help="How many unique models to write.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Same seed and count give byte-identical artifacts and manifest.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes (default: cores).")
@click.option("--profile", type=click.Choice(PROFILE_NAMES), default="tiny", show_default=True,
              help="tiny (6-300 KB), bert-mini (~42 MiB), bert-small (~109 MiB), bert-base (~415 MiB), "
                   "resnet50 (~98 MiB), or mixed (90 % tiny, 8 % bert-mini, 0.75 % bert-small, "
                   "0.75 % resnet50, 0.5 % bert-base); see model_repository/profiles.py.")
@click.option("--format", "fmt", type=click.Choice(["torchscript", "torch_export"]), default="torchscript",
              show_default=True, help="TorchScript (.pt) or a torch.export ExportedProgram (.pt2).")
@click.option("--dtype", type=click.Choice(["FP32", "FP16", "BF16"]), default="FP32", show_default=True,
              help="Weights, floating-point inputs and outputs in this type (token ids stay INT64).")
@needs_extra("torch")
def generate(count: int, out: Path, seed: int, workers: int | None, profile: str, fmt: str, dtype: str) -> None:
    """Write N unique models of a profile (tiny MLP/CNN/text, BERT- or ResNet-shaped) and OUT/manifest.json."""
    from collections import Counter

    from model_repository import profiles
    from model_repository.generator import generate as run

    needed, free = profiles.disk_needed(profile, count), profiles.disk_free(out)
    click.echo(f"{count} {profile} models as {fmt} ({dtype}): needs up to {needed / 2**30:.2f} GiB on disk "
               f"({free / 2**30:.1f} GiB free)")
    try:
        profiles.check_disk(out, needed)
    except profiles.NotEnoughDisk as error:
        raise click.ClickException(str(error)) from None
    with _progress(count, "model", "generate") as bar:
        manifest = run(count, out, seed=seed, workers=workers, on_progress=bar.update, profile=profile, fmt=fmt,
                       check_disk_space=False, dtype=dtype)
    kinds = Counter(m.id.rsplit("-", 1)[0] if m.architecture in ("bert", "resnet") else m.architecture
                    for m in manifest.models)
    total = sum(m.bytes for m in manifest.models)
    click.echo(f"wrote {len(manifest.models)} models ({total / 2**20:.1f} MiB) to {out} "
               f"({dict(sorted(kinds.items()))}); manifest {out / 'manifest.json'}")


@main.command()
@click.option("--models", "models_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True, help="Folder with manifest.json (from `fleet generate`).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Triton repository folder.")
@click.option("--pack-size", type=click.IntRange(1), default=100, show_default=True,
              help="Members per pack (one Triton model, one stub process).")
@click.option("--dedicated", is_flag=True, help="One Triton model per user model (for big models).")
@click.option("--max-resident-mib", type=click.IntRange(1), default=256, show_default=True,
              help="LRU budget per pack instance.")
@click.option("--queue-delay-us", type=click.IntRange(0), default=500, show_default=True,
              help="Dynamic batching delay; 0 disables dynamic batching.")
def pack(models_dir: Path, out: Path, pack_size: int, dedicated: bool, max_resident_mib: int,
         queue_delay_us: int) -> None:
    """Lay out a Triton repository: packs (default) or dedicated models, configs for cpu/gpu/inf2."""
    from model_repository.manifest import Manifest
    from model_repository.packing import build_repository
    from model_repository.triton_config import PackSettings

    settings = PackSettings(max_resident_bytes=max_resident_mib * 2**20,
                            max_queue_delay_us=queue_delay_us, dynamic_batching=queue_delay_us > 0)
    total = len(Manifest.read(models_dir).models)
    with _progress(total, "model", "pack") as bar:
        plans = build_repository(models_dir, out, pack_size=pack_size, dedicated=dedicated,
                                 settings=settings, on_progress=bar.update)
    click.echo(f"wrote {len(plans)} Triton models for {total} user models to {out}")


@main.command()
@click.argument("repository", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("uri")
@click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL_S3", help="Any S3 endpoint (default: AWS).")
def upload(repository: Path, uri: str, endpoint_url: str | None) -> None:
    """Put a Triton repository into S3 (URI: s3://BUCKET/PREFIX); only changed files move."""
    from model_repository.s3_sync import SyncError, local_index, s3_client
    from model_repository.s3_sync import upload as run

    total = sum(m["size"] for m in local_index(repository).values())
    try:
        with _progress(total, "B", "upload", unit_scale=True) as bar:
            changed = run(repository, uri, s3_client(endpoint_url), on_progress=bar.update)
    except SyncError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"uploaded {len(changed)} changed files to {uri}")


@main.command()
@click.argument("uri")
@click.argument("repository", type=click.Path(file_okay=False, path_type=Path))
@click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL_S3", help="Any S3 endpoint (default: AWS).")
@click.option("--interval", type=click.FloatRange(0), default=0, show_default=True,
              help="Seconds between syncs; 0 syncs once and exits (a sidecar uses e.g. 30).")
@click.option("--server", envvar="FLEET_SYNC_SERVER", default=None,
              help="Sync only this server's assignment (.fleet/assignments/NAME.json, written by the control "
                   "plane); without it the whole repository is synced.")
@click.option("--disk-budget-bytes", envvar="FLEET_SYNC_DISK_BUDGET_BYTES", type=click.IntRange(0), default=None,
              help="Bytes the repository may hold (with --server); default: free disk less 5%.")
@click.option("--triton-metrics-url", envvar="FLEET_SYNC_TRITON_METRICS_URL", default=None,
              help="e.g. http://127.0.0.1:8002/metrics: packs that get requests count as recently used.")
@click.option("--server-from", "server_from", envvar="FLEET_SYNC_SERVER_FROM", type=click.Choice(["ecs-task-metadata"]),
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


@main.command()
@click.argument("repository", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--family", type=click.Choice(["cpu", "gpu", "inf2"]), default="cpu", show_default=True,
              help="Which config each model uses (--model-config-name).")
@click.option("--load", "load", multiple=True, help="Model to load at start (repeatable, or 'all').")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--admin-key", envvar="FLEET_TRITON_ADMIN_KEY",
              help="Require header triton-admin-key on the repository API (load/unload).")
@needs_extra("server")
def serve(repository: Path, family: str, load: tuple[str, ...], http_port: int, grpc_port: int,
          metrics_port: int, admin_key: str | None) -> None:
    """Run the real tritonserver on 127.0.0.1 (explicit model control) until Ctrl-C."""
    from fleet.triton_server import TritonServer, TritonServerError

    names = tuple(sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").exists())) \
        if "all" in load else load
    server = TritonServer(repository, family=family, admin_key=admin_key, http_port=http_port,
                          grpc_port=grpc_port, metrics_port=metrics_port,
                          log_path=repository.resolve().parent / "tritonserver.log")
    try:
        server.start()
        with _progress(len(names), "model", "load") as bar:
            for name in names:
                server.load(name)
                bar.update(1)
    except TritonServerError as error:
        server.stop()
        raise click.ClickException(str(error)) from None
    click.echo(f"tritonserver ready: HTTP {server.http_url}  gRPC {server.grpc_url}  "
               f"metrics {server.metrics_url}  log {server.log_path}\nCtrl-C stops it.")
    try:
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while server.process and server.process.poll() is None:
            time.sleep(1)
        click.echo(f"tritonserver exited with {server.process.returncode}; see {server.log_path}", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@main.command(name="compile")
@click.argument("repository", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--family", type=click.Choice(["inf2"]), required=True)
@click.option("--static-batch", type=click.IntRange(1), default=8, show_default=True,
              help="Batch size each member is traced at (Neuron runs static shapes).")
@click.option("--publish", "publish_uri", default=None, metavar="s3://BUCKET/PREFIX",
              help="Then put the compiled packs back where REPOSITORY was synced from (`fleet sync`), beside a "
                   "control plane that publishes there: only those packs, with conditional writes; a pack it "
                   "rebuilt meanwhile is left alone and reported.")
@click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL_S3", help="Any S3 endpoint (default: AWS).")
def compile_(repository: Path, family: str, static_batch: int, publish_uri: str | None,
             endpoint_url: str | None) -> None:
    """Compile pack members for Inferentia2 with torch_neuronx.trace, in the server-inf2 image.

    Runs where torch-neuronx is: the image that serves the artifacts (docs/eks.md, "Inferentia2"), so the
    torch that compiles them is the one that loads them. Members already compiled from the same source are
    skipped; a member this torch cannot load is reported and the rest go on (exit 1 if any failed).
    """
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torch_neuronx") is None:
        raise click.ClickException(
            "`fleet compile --family inf2` needs torch-neuronx and the torch it pins: run it in the "
            "triton-fleet/server-inf2 image (triton/docker/Dockerfile.inf2), where the artifacts are served; "
            "docs/eks.md, step 7c. Nothing was changed.")
    from model_repository.neuron_compile import NeuronUnavailable, compile_repository

    try:
        with _progress(sum(len(json.loads(p.read_text())["members"]) for p in repository.glob("*/1/members.json")),
                       "member", "compile") as bar:
            report = compile_repository(repository, static_batch=static_batch, on_progress=bar.update)
    except NeuronUnavailable as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{family}: compiled {len(report.compiled)} members with torch {report.torch_version}, "
               f"{len(report.skipped)} already compiled, {len(report.failed)} failed")
    for ident, reason in sorted(report.failed.items()):
        click.echo(f"FAILED {ident}: {reason}", err=True)
    if publish_uri:
        from model_repository.publish_compiled import publish_compiled
        from model_repository.s3_sync import s3_client

        published = publish_compiled(repository, publish_uri, s3_client(endpoint_url))
        click.echo(f"published {len(published.published)} packs ({published.bytes} B) to {publish_uri}")
        for pack, reason in sorted(published.skipped.items()):
            click.echo(f"NOT PUBLISHED {pack}: {reason}", err=True)
        if published.skipped:
            raise SystemExit(1)
    if report.failed:
        raise SystemExit(1)


@main.command(name="up")
@click.option("--models", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--loadtest-seconds", type=click.IntRange(1), default=20, show_default=True)
@click.option("--users", type=click.IntRange(1), default=16, show_default=True)
@click.option("--profile", type=click.Choice(PROFILE_NAMES), default="tiny", show_default=True,
              help="Profile of the bulk of the models (see `fleet generate --help`).")
@click.option("--real-size", default="bert-mini,resnet50,bert-small", show_default=True,
              help="Real-size phase: one model of each listed kind, counted in --models ('' for none).")
@click.option("--control-planes", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Control-plane replicas; more than one run on an embedded PostgreSQL with one leader.")
@click.option("--servers", type=click.IntRange(1), default=2, show_default=True, help="Local tritonservers.")
@needs_extra("server")
def up_command(models: int, loadtest_seconds: int, users: int, profile: str, real_size: str,
               control_planes: int, servers: int) -> None:
    """Start the local stack (S3, N tritonservers, control plane), register models, load-test it."""
    from fleet.stack import print_summary, up

    kinds = tuple(k.strip() for k in real_size.split(",") if k.strip())
    unknown = [k for k in kinds if k not in PROFILE_NAMES or k in ("tiny", "mixed")]
    if unknown:
        raise click.BadParameter(f"{unknown} are not real-size kinds; choose from bert-mini, bert-small, "
                                 "bert-base, resnet50", param_hint="--real-size")
    print_summary(up(models=models, loadtest_seconds=loadtest_seconds, users=users, profile=profile,
                     real_size=kinds, control_planes=control_planes, servers=servers))


@main.command(name="down")
def down_command() -> None:
    """Stop everything `fleet up` started."""
    from fleet.stack import down

    stopped = down()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@main.group(name="server")
def server_commands() -> None:
    """Servers of a running fleet: drain one before it leaves, stop one of the local stack."""


def _server_api(url: str | None, token: str | None):
    from fleet.servers import ControlPlaneApi, local_stack_api
    from fleet.stack import STACK_FILE

    if url:
        return ControlPlaneApi(url, token)
    api = local_stack_api(STACK_FILE)
    if api is None:
        raise click.ClickException("no control plane: pass --url/--token (FLEET_CONTROL_PLANE_URL, FLEET_API_TOKEN) "
                                   "or start the local stack with `fleet up`")
    return api


_URL = click.option("--url", envvar="FLEET_CONTROL_PLANE_URL", default=None,
                    help="Control plane (default: the one `fleet up` started).")
_TOKEN = click.option("--token", envvar="FLEET_API_TOKEN", default=None, help="API bearer token.")


@server_commands.command(name="drain")
@click.argument("name")
@click.option("--wait", "wait_s", type=click.FloatRange(0), default=0, show_default=True,
              help="Seconds to wait until the server holds no replica (0: return at once).")
@_URL
@_TOKEN
def server_drain(name: str, wait_s: float, url: str | None, token: str | None) -> None:
    """Drain NAME: no new replicas; its replicas move elsewhere, then unload here."""
    from fleet.servers import ServerCommandError, drain

    try:
        server = drain(_server_api(url, token), name, wait_s,
                       on_progress=lambda s: click.echo(f"{name}: still holds {len(s['placed_packs'])} packs"))
    except ServerCommandError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{name}: draining; holds {len(server.get('placed_packs', []))} packs")


@server_commands.command(name="wait-drained")
@click.option("--triton-url", default="http://127.0.0.1:8000", show_default=True,
              help="HTTP endpoint of the Triton to watch (the pod's own).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=270, show_default=True,
              help="Seconds to wait at most; keep it below the pod's terminationGracePeriodSeconds less "
                   "Triton's own shutdown (--exit-timeout-secs).")
@click.option("--interval", "interval_s", type=click.FloatRange(0.1), default=2, show_default=True,
              help="Seconds between two looks at Triton's repository index.")
@click.option("--admin-key", envvar="TRITON_ADMIN_KEY", default=None,
              help="Triton's model-repository API key (default: $TRITON_ADMIN_KEY, as in the server pods).")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Also append the progress lines here, e.g. /proc/1/fd/1 (the container's own stdout: a "
                   "preStop hook's output is otherwise seen only when it fails); skipped, with a warning, if it "
                   "cannot be opened.")
def server_wait_drained(triton_url: str, timeout_s: float, interval_s: float, admin_key: str | None,
                        log_file: str | None) -> None:
    """Wait until this server's Triton has no model loaded: a preStop hook, so a pod that is being deleted
    stops only after the control plane has loaded its replicas elsewhere and unloaded them here.

    The control plane starts that drain itself when discovery sees the pod terminating (EKS) or its
    target draining (ECS). Exits 0 once Triton reports no READY model (or no longer answers); exits 1
    when --timeout passes first, naming the models still loaded and what to check.
    """
    from fleet.servers import ServerCommandError, also_log_to, wait_drained

    also_log_to(log_file)
    try:
        wait_drained(triton_url, timeout_s, admin_key, interval_s)
    except ServerCommandError as error:
        if log_file:
            logging.getLogger("fleet.servers").error("%s", error)
        raise click.ClickException(str(error)) from None


@server_commands.command(name="stop")
@click.argument("name")
@click.option("--wait", "wait_s", type=click.FloatRange(0), default=300, show_default=True,
              help="Seconds to wait for the drain before stopping anyway.")
def server_stop(name: str, wait_s: float) -> None:
    """Leave the local stack gracefully: drain NAME, remove it from the control plane, stop its process."""
    from fleet.servers import ServerCommandError, drain
    from fleet.stack import stop_server

    api = _server_api(None, None)
    try:
        drain(api, name, wait_s,
              on_progress=lambda s: click.echo(f"{name}: still holds {len(s['placed_packs'])} packs"))
        api.call("DELETE", f"/servers/{name}")
    except ServerCommandError as error:
        raise click.ClickException(f"{error}; {name} keeps running") from None
    click.echo(f"{name}: drained, removed and {'stopped' if stop_server(name) else 'was not running'}")


@main.command()
@click.option("--target", type=click.Choice(["eks", "ecs"]), required=True)
@click.option("--repository", required=True, help="s3://BUCKET/PREFIX the servers sync from.")
@click.option("--replicas", default="cpu=1", show_default=True,
              help="Servers per family, e.g. cpu=2,gpu=1,inf2=1 (ECS runs cpu only).")
@click.option("--image-tag", default="0.1.0", show_default=True)
@click.option("--region", default=None, help="AWS region (default: the credential chain's).")
@click.option("--control-plane-replicas", type=click.IntRange(1), default=None,
              help="EKS: control-plane replicas (default: the manifests' 2, which need PostgreSQL in the "
                   "fleet-database Secret; 1 may run on SQLite for a trial). FLEET_EKS_CONTROL_PLANE_REPLICAS.")
@click.option("--teardown", is_flag=True, help="Remove what a previous deploy created instead.")
def deploy(target: str, repository: str, replicas: str, image_tag: str, region: str | None,
           control_plane_replicas: int | None, teardown: bool) -> None:
    """Deploy the fleet to EKS or ECS and wait until it is ready (FLEET_EKS_* / FLEET_ECS_* settings)."""
    from control_plane.deployments import make_target
    from control_plane.settings import Settings
    from control_plane.targets.base import DeploymentSpec, TargetError

    try:
        counts = {k: int(v) for k, v in (part.split("=", 1) for part in replicas.split(",") if part)}
    except ValueError:
        raise click.BadParameter("use FAMILY=COUNT pairs, e.g. cpu=2,gpu=1", param_hint="--replicas") from None
    unknown = set(counts) - {"cpu", "gpu", "inf2"}
    if unknown:
        raise click.BadParameter(f"unknown families {sorted(unknown)}; use cpu, gpu, inf2",
                                 param_hint="--replicas")
    try:
        runner = make_target(target, Settings.from_env(repository_uri=repository),
                             control_plane_replicas=control_plane_replicas)
        if teardown:
            runner.teardown(progress=click.echo)
            click.echo(f"{target}: torn down")
            return
        runner.deploy(DeploymentSpec(repository_uri=repository, replicas=counts, image_tag=image_tag,
                                     region=region), progress=click.echo)
        for server in runner.discover_servers():
            click.echo(f"{server.name:30} {server.family:5} grpc {server.grpc_url}")
    except TargetError as error:
        raise click.ClickException(str(error)) from None


@main.command(name="bench")
@click.option("--quick", is_flag=True, help="Smaller counts and shorter runs (under 5 minutes on 2 cores).")
@click.option("--gpu", is_flag=True,
              help="Only the GPU variant (packs on CUDA vs raw batched torch vs FastAPI on GPU); without "
                   "CUDA it says why and exits 0.")
@click.option("--only", default=None, metavar="SECTIONS",
              help="Comma-separated sections: data_plane, peers, loadgen, adfilter (default: all).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Results folder (default results/bench, git-ignored).")
@click.option("--docs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown report to write (default docs/benchmarks.md; --gpu: docs/benchmarks-gpu.md).")
@click.option("--no-docs", is_flag=True, help="Write only the JSON.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--render", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="BENCH_JSON", help="Measure nothing: rewrite the report (--docs) from a saved bench.json.")
@needs_extra("server")
def bench_command(quick: bool, gpu: bool, only: str | None, out: Path | None, docs: Path | None, no_docs: bool,
                  seed: int, render: Path | None) -> None:
    """Benchmarks against the peers and the limits, side by side in one run (benchmarks/suite.py).

    Packs vs the classic FastAPI server and a no-op Triton floor; density, load time and cold start;
    locust vs the raw driver; the ad filter at saturation. Writes JSON and docs/benchmarks.md, marking
    each goal met or not met from the measured ratios.
    """
    from benchmarks.suite import main as run

    argv = ["--seed", str(seed)] + ["--quick"] * quick + ["--gpu"] * gpu + ["--no-docs"] * no_docs
    argv += ["--only", only] if only else []
    argv += ["--out", str(out)] if out else []
    argv += ["--docs", str(docs)] if docs else []
    argv += ["--render", str(render)] if render else []
    raise SystemExit(run(argv))


if __name__ == "__main__":
    main()
