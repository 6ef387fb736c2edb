"""`fleet serve`, `up`, `down` and `fleet server ...`: the processes of a local fleet, and servers that leave
one gracefully (fleet/stack.py, fleet/demo.py, fleet/servers.py)."""
from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import click

from fleet.commands import PROFILE_NAMES, progress
from fleet.demo_models import REAL_SIZE_PHASE
from fleet.extras import needs_extra
from fleet.settings import ClientSettings, ControlPlaneSettings


@click.command()
@click.argument("repository", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--family", type=click.Choice(["cpu", "gpu", "inf2"]), default="cpu", show_default=True,
              help="Which config each model uses (--model-config-name).")
@click.option("--load", "load", multiple=True, help="Model to load at start (repeatable, or 'all').")
@click.option("--http-port", type=int, default=8000, show_default=True)
@click.option("--grpc-port", type=int, default=8001, show_default=True)
@click.option("--metrics-port", type=int, default=8002, show_default=True)
@click.option("--admin-key", envvar=ControlPlaneSettings.env_name("triton_admin_key"),
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
        with progress(len(names), "model", "load") as bar:
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


@click.command(name="up")
@click.option("--models", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--loadtest-seconds", type=click.IntRange(1), default=20, show_default=True)
@click.option("--users", type=click.IntRange(1), default=16, show_default=True)
@click.option("--profile", type=click.Choice(PROFILE_NAMES), default="tiny", show_default=True,
              help="Profile of the bulk of the models (see `fleet generate --help`).")
@click.option("--real-size", default=",".join(REAL_SIZE_PHASE), show_default=True,
              help="Real-size phase: one model of each listed kind, counted in --models ('' for none); a kind "
                   "listed several times in a row gives fine-tunes of one architecture (a family).")
@click.option("--control-planes", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Control-plane replicas; more than one run on an embedded PostgreSQL with one leader.")
@click.option("--servers", type=click.IntRange(1), default=2, show_default=True, help="Local tritonservers.")
@needs_extra("server")
def up_command(models: int, loadtest_seconds: int, users: int, profile: str, real_size: str,
               control_planes: int, servers: int) -> None:
    """Start the local stack (S3, N tritonservers, control plane), register models, load-test it."""
    from fleet.demo import print_summary, up

    kinds = tuple(k.strip() for k in real_size.split(",") if k.strip())
    unknown = [k for k in kinds if k not in PROFILE_NAMES or k in ("tiny", "mixed")]
    if unknown:
        raise click.BadParameter(f"{unknown} are not real-size kinds; choose from bert-mini, bert-small, "
                                 "bert-base, resnet50", param_hint="--real-size")
    print_summary(up(models=models, loadtest_seconds=loadtest_seconds, users=users, profile=profile,
                     real_size=kinds, control_planes=control_planes, servers=servers))


@click.command(name="down")
def down_command() -> None:
    """Stop everything `fleet up` started."""
    from fleet.stack import down

    stopped = down()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@click.group(name="server")
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


_URL = click.option("--url", envvar=ClientSettings.env_name("control_plane_url"), default=None,
                    help="Control plane (default: the one `fleet up` started).")
_TOKEN = click.option("--token", envvar=ClientSettings.env_name("api_token"), default=None, help="API bearer token.")


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
