"""The `fleet` command: one entry point whose subcommands delegate to the room that owns the work."""
from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import click
from tqdm import tqdm

from adfilter.cli import adfilter as adfilter_commands


def _progress(total: int, unit: str, desc: str, unit_scale: bool = False) -> tqdm:
    return tqdm(total=total, unit=unit, desc=desc, unit_scale=unit_scale, dynamic_ncols=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
def generate(count: int, out: Path, seed: int, workers: int | None) -> None:
    """Write N unique TorchScript models (MLP, CNN, EmbeddingBag text) and OUT/manifest.json."""
    from model_repository.generator import generate as run

    with _progress(count, "model", "generate") as bar:
        manifest = run(count, out, seed=seed, workers=workers, on_progress=bar.update)
    kinds = {a: sum(m.architecture == a for m in manifest.models) for a in ("mlp", "cnn", "text")}
    click.echo(f"wrote {len(manifest.models)} models to {out} ({kinds}); manifest {out / 'manifest.json'}")


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
def sync(uri: str, repository: Path, endpoint_url: str | None, interval: float) -> None:
    """Bring a local repository in step with S3: incremental, verified, atomic per model."""
    from model_repository.s3_sync import SyncError, s3_client
    from model_repository.s3_sync import sync as run

    client = s3_client(endpoint_url)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    while True:
        try:
            with tqdm(unit="B", unit_scale=True, desc="sync", dynamic_ncols=True) as bar:
                report = run(uri, repository, client, on_progress=bar.update)
            click.echo(f"synced {len(report.downloaded)} files ({report.bytes} B); changed models: "
                       f"{sorted(report.changed_models) or 'none'}; removed: "
                       f"{sorted(report.removed_models) or 'none'}")
            for path, reason in report.refused.items():
                click.echo(f"REFUSED {path}: {reason}", err=True)
        except SyncError as error:
            if not interval:
                raise click.ClickException(str(error)) from None
            click.echo(f"sync failed, will retry: {error}", err=True)
        if not interval:
            if not report.ok:
                raise SystemExit(1)
            return
        deadline = time.monotonic() + interval
        while time.monotonic() < deadline and not stop["now"]:
            time.sleep(0.5)
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
def compile_(repository: Path, family: str, static_batch: int) -> None:
    """Compile pack members for Inferentia2 with torch_neuronx.trace (needs the Neuron SDK)."""
    from model_repository.neuron_compile import NeuronUnavailable, compile_repository

    try:
        count = compile_repository(repository, static_batch=static_batch)
    except NeuronUnavailable as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"compiled {count} members for {family}")


main.add_command(adfilter_commands)

@main.command(name="up")
@click.option("--models", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--loadtest-seconds", type=click.IntRange(1), default=20, show_default=True)
@click.option("--users", type=click.IntRange(1), default=16, show_default=True)
def up_command(models: int, loadtest_seconds: int, users: int) -> None:
    """Start the local stack (S3, 2 tritonservers, control plane), register models, load-test it."""
    from fleet.stack import print_summary, up

    print_summary(up(models=models, loadtest_seconds=loadtest_seconds, users=users))


@main.command(name="down")
def down_command() -> None:
    """Stop everything `fleet up` started."""
    from fleet.stack import down

    stopped = down()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@main.command()
@click.option("--target", type=click.Choice(["eks", "ecs"]), required=True)
@click.option("--repository", required=True, help="s3://BUCKET/PREFIX the servers sync from.")
@click.option("--replicas", default="cpu=1", show_default=True,
              help="Servers per family, e.g. cpu=2,gpu=1,inf2=1 (ECS runs cpu only).")
@click.option("--image-tag", default="0.1.0", show_default=True)
@click.option("--region", default=None, help="AWS region (default: the credential chain's).")
@click.option("--teardown", is_flag=True, help="Remove what a previous deploy created instead.")
def deploy(target: str, repository: str, replicas: str, image_tag: str, region: str | None,
           teardown: bool) -> None:
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
        runner = make_target(target, Settings.from_env(repository_uri=repository))
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


def _register_room_commands() -> None:
    from control_plane.server import control_plane

    main.add_command(control_plane)
    from loadtest.cli import loadtest, report

    main.add_command(loadtest)
    main.add_command(report)
    from control_plane.observability.cli import dashboards_group, logs_command

    main.add_command(logs_command)
    main.add_command(dashboards_group)


_register_room_commands()

if __name__ == "__main__":
    main()
