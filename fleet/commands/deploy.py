"""`fleet deploy` (EKS, ECS) and `fleet bench`: the commands that reach into the control plane's deployment
targets and into the benchmarks."""
from __future__ import annotations

from pathlib import Path

import click

from fleet.extras import needs_extra


@click.command()
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


@click.command(name="bench")
@click.option("--quick", is_flag=True, help="Smaller counts and shorter runs (under 5 minutes on 2 cores).")
@click.option("--gpu", is_flag=True,
              help="Only the GPU variant (packs on CUDA vs raw batched torch vs FastAPI on GPU); without "
                   "CUDA it says why and exits 0.")
@click.option("--only", default=None, metavar="SECTIONS",
              help="Comma-separated sections: data_plane, peers, loadgen, adfilter (the default: all four), families "
                   "(only when named: architecture families vs whole artifacts, docs/benchmarks-families.md).")
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
