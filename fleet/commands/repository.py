"""`fleet generate`, `pack`, `upload`, `compile`: building model repositories (model_repository/)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from fleet.commands import PROFILE_NAMES, progress
from fleet.extras import needs_extra


@click.command()
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
@click.option("--family", is_flag=True, help="Fine-tunes of one base: every model has the first one's layout "
              "(one architecture per kind) and weights of its own.")
@needs_extra("torch")
def generate(count: int, out: Path, seed: int, workers: int | None, profile: str, fmt: str, dtype: str,
             family: bool) -> None:
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
    with progress(count, "model", "generate") as bar:
        manifest = run(count, out, seed=seed, workers=workers, on_progress=bar.update, profile=profile, fmt=fmt,
                       check_disk_space=False, dtype=dtype, family=family)
    kinds = Counter(m.id.rsplit("-", 1)[0] if m.architecture in ("bert", "resnet") else m.architecture
                    for m in manifest.models)
    total = sum(m.bytes for m in manifest.models)
    click.echo(f"wrote {len(manifest.models)} models ({total / 2**20:.1f} MiB) to {out} "
               f"({dict(sorted(kinds.items()))}); manifest {out / 'manifest.json'}")


@click.command()
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
@click.option("--families/--whole", default=False, show_default=True,
              help="Split each member into its architecture's program (once per pack) and its weights file, as "
                   "the control plane does at registration; --whole keeps whole artifacts.")
def pack(models_dir: Path, out: Path, pack_size: int, dedicated: bool, max_resident_mib: int,
         queue_delay_us: int, families: bool) -> None:
    """Lay out a Triton repository: packs (default) or dedicated models, configs for cpu/gpu/inf2."""
    from model_repository.manifest import Manifest
    from model_repository.packing import build_repository
    from model_repository.triton_config import PackSettings

    settings = PackSettings(max_resident_bytes=max_resident_mib * 2**20,
                            max_queue_delay_us=queue_delay_us, dynamic_batching=queue_delay_us > 0)
    total = len(Manifest.read(models_dir).models)
    with progress(total, "model", "pack") as bar:
        plans = build_repository(models_dir, out, pack_size=pack_size, dedicated=dedicated,
                                 settings=settings, on_progress=bar.update, families=families)
    click.echo(f"wrote {len(plans)} Triton models for {total} user models to {out}")


@click.command()
@click.argument("repository", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("uri")
@click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL_S3", help="Any S3 endpoint (default: AWS).")
def upload(repository: Path, uri: str, endpoint_url: str | None) -> None:
    """Put a Triton repository into S3 (URI: s3://BUCKET/PREFIX); only changed files move."""
    from model_repository.s3_sync import SyncError, local_index, s3_client
    from model_repository.s3_sync import upload as run

    total = sum(m["size"] for m in local_index(repository).values())
    try:
        with progress(total, "B", "upload", unit_scale=True) as bar:
            changed = run(repository, uri, s3_client(endpoint_url), on_progress=bar.update)
    except SyncError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"uploaded {len(changed)} changed files to {uri}")


@click.command(name="compile")
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
        with progress(sum(len(json.loads(p.read_text())["members"]) for p in repository.glob("*/1/members.json")),
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
