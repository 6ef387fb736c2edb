"""POST /api/v1/models of a ~7 KB TorchScript model with 10,000 models already registered: how long one
registration takes, and where the time goes.

Real parts: the app (create_app, Flask test client, multipart upload), SQLite, SeaweedFS for S3 and the
sandboxed validator (fork servers). The reconciler does not run, so pack rebuilds and loads, which follow
a registration asynchronously, are not in these figures. The registry is filled straight with rows (as in
benchmarks/catalogue.py), all of the uploaded model's kind and family so that choosing its pack has every
pack to consider.

The baseline, measured in the same run and interleaved with the new path (one each, in turn), is the
handler as it was before: the old pack-fill query (every model in the registry counted) and the old
response (every placement in the fleet read to render one model), kept below verbatim but for names.

    python -m benchmarks.registration                     # 10,000 models, 20 registrations each way
    python -m benchmarks.registration --models 2000 --registrations 5 --no-docs
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import torch
from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import func, select

from benchmarks.catalogue import old_endpoints_by_pack, old_model_out, populate
from control_plane.api.models import UploadForm, _family, _signature, _staged
from control_plane.app import create_app
from control_plane.db import Model, ModelVersion, Pack
from control_plane.locking import lock_pack_choice
from control_plane.placement import PackFill
from control_plane.registry import Registry
from control_plane.repository import RepositoryBuilder
from control_plane.schemas import ModelOut
from control_plane.settings import Settings
from fleet.seaweedfs import SeaweedS3
from model_repository.s3_sync import INDEX_KEY, S3Location

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "benchmarks.md"
START, END = "<!-- registration:start -->", "<!-- registration:end -->"
TOKEN = "registration-bench"
FEATURES = 32
SIGNATURE = {"inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, FEATURES]}],
             "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, FEATURES]}]}
KIND = "fp32r2-ofp32r2"  # model_repository.triton_config.pack_kind of SIGNATURE


def artifact(path: Path, seed: int) -> bytes:
    """A distinct ~7 KB TorchScript model (a traced Linear with its own weights)."""
    torch.manual_seed(seed)
    module = torch.nn.Linear(FEATURES, FEATURES).eval()
    torch.jit.save(torch.jit.trace(module, (torch.randn(2, FEATURES),)), str(path))
    return path.read_bytes()


# ---- the baseline: the pack choice and the response before this change ---------------------------------
class OldRegistry(Registry):
    def _join_pack(self, session, model, version) -> None:
        lock_pack_choice(session, version.pack_kind, model.family)
        current = (select(Model.pack, func.count().label("n"), func.sum(ModelVersion.bytes).label("b"))
                   .join(ModelVersion, (ModelVersion.model == Model.name) &
                         (ModelVersion.version == Model.current_version))
                   .where(Model.pack.is_not(None), Model.name != model.name)
                   .group_by(Model.pack).subquery())
        rows = session.execute(
            select(Pack.name, func.coalesce(current.c.n, 0), func.coalesce(current.c.b, 0))
            .outerjoin(current, current.c.pack == Pack.name)
            .where(Pack.kind == version.pack_kind, Pack.family == model.family)
            .order_by(Pack.name)).all()
        chosen = self.choose_pack([PackFill(name, int(b), int(n)) for name, n, b in rows], version.bytes,
                                  self.settings)
        if chosen is None:
            base = f"{version.pack_kind}-{model.family}-".replace("_", "-")
            taken = [int(m.group(1)) for (name, _, _) in rows
                     if (m := re.fullmatch(re.escape(base) + r"(\d+)", name))]
            pack = Pack(name=f"{base}{max(taken, default=-1) + 1:04d}", family=model.family,
                        kind=version.pack_kind, generation=0)
            session.add(pack)
            session.flush()
        else:
            pack = self._locked_pack(session, chosen)
        pack.generation += 1
        model.pack = pack.name
        model.joined_generation = pack.generation


class OldBuilder(RepositoryBuilder):
    """Reads the repository index again to merge it, as every build did before."""

    def _merge_index(self, pack, entries, first_read=None):
        return super()._merge_index(pack, entries)


old = APIBlueprint("old_register", __name__, url_prefix="/bench/old-register")


@old.post("")
@old.input(UploadForm, location="form_and_files", arg_name="form")
@old.output(ModelOut, status_code=201)
def old_register(form):
    state = current_app.extensions["fleet"]
    signature, family = _signature(form["signature"]), _family(form.get("family", "cpu"))
    with _staged(form["artifact"]) as staged:
        registered = current_app.config["OLD_REGISTRY"].register(form["name"], staged, signature, family)
    state.reconciler.nudge()
    with state.sessions() as session:
        model = session.get(Model, form["name"])
        version = session.get(ModelVersion, (model.name, model.current_version))
        return old_model_out(model, version, old_endpoints_by_pack(session)), 201 if registered.created else 200


# ---- phases: wall time spent in each step of a registration --------------------------------------------
PHASES = {"validate (sandboxed fork)": "_validate", "S3 put": "_put", "refuse-unservable check": "_refuse_unservable",
          "pack choice (in the transaction)": "_join_pack", "same-name check": "_existing"}


def instrument(registry: Registry, spent: dict[str, list[float]]) -> None:
    for label, attribute in PHASES.items():
        method = getattr(registry, attribute)

        def timed(*args, _method=method, _label=label, **kwargs):
            started = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[_label].append((time.perf_counter() - started) * 1000)
        setattr(registry, attribute, timed)


def run(models: int, registrations: int, workdir: Path) -> dict:
    with SeaweedS3(workdir / "s3") as s3:
        s3.create_bucket("models")
        settings = Settings(database_url=f"sqlite:///{workdir / 'registry.db'}", api_token=TOKEN,
                            s3_endpoint_url=s3.endpoint_url, repository_uri="s3://models/repository",
                            work_dir=workdir / "work", pack_size=10)
        os.environ.update(s3.environment())
        app = create_app(settings, start_reconciler=False)
        logging.disable(logging.INFO)
        app.register_blueprint(old)
        state = app.extensions["fleet"]
        app.config["OLD_REGISTRY"] = OldRegistry(state.sessions, settings, state.s3, state.validator)
        spent: dict[str, list[float]] = defaultdict(list)
        instrument(state.registry, spent)
        client = app.test_client()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        populate(state.sessions, models, 10, kind=KIND)  # with servers a, b (healthy) and c
        files = [artifact(workdir / f"m{i}.pt", i) for i in range(2 * registrations + 2)]
        print(f"{models:,} models registered straight into SQLite; artifact {len(files[0]):,} bytes")

        def post(path: str, name: str, data: bytes) -> float:
            started = time.perf_counter()
            response = client.post(path, headers=headers, data={
                "name": name, "signature": json.dumps(SIGNATURE), "artifact": (io.BytesIO(data), "model.pt")})
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status_code == 201, response.text
            return elapsed

        post("/api/v1/models", "warm-new", files[-1])  # fork servers started, code paths warm
        post("/bench/old-register", "warm-old", files[-2])
        spent.clear()
        new_ms, old_ms = [], []
        for i in range(registrations):
            new_ms.append(post("/api/v1/models", f"new-{i:03d}", files[2 * i]))
            old_ms.append(post("/bench/old-register", f"old-{i:03d}", files[2 * i + 1]))
        build_old, build_new, index_bytes = time_pack_builds(state, settings, models, registrations)
        return {"models": models, "registrations": registrations, "bytes": len(files[0]),
                "new_ms": statistics.median(new_ms), "old_ms": statistics.median(old_ms),
                "phases": {label: statistics.median(times) for label, times in spent.items()},
                "build_old_ms": build_old, "build_new_ms": build_new, "index_bytes": index_bytes}


def time_pack_builds(state, settings: Settings, models: int, repeats: int) -> tuple[float, float, int]:
    """What the reconciler's rebuild of one pack after a registration costs with an index naming every
    file of `models` models (5 small files per 10-member pack and each member): old builder vs new,
    interleaved. The pack's files are unchanged between builds, so each build is mostly the index."""
    location = S3Location.parse(settings.repository_uri)
    entries = {}
    for p in range(models // 10):
        for relative in ("config.pbtxt", "configs/gpu.pbtxt", "configs/inf2.pbtxt", "1/model.py", "1/members.json"):
            entries[f"pack-{p:05d}/{relative}"] = {"sha256": f"{p:064x}", "size": 1234}
        for m in range(10):
            entries[f"pack-{p:05d}/1/members/model-{10 * p + m:05d}.pt"] = {"sha256": f"{m:064x}", "size": 7000}
    body = json.dumps({"format": 1, "files": entries}, sort_keys=True).encode()
    state.s3.put_object(Bucket=location.bucket, Key=location.key(INDEX_KEY), Body=body)
    new_builder, old_builder = RepositoryBuilder(state.registry), OldBuilder(state.registry)
    with state.sessions() as session:
        pack = session.get(Pack, session.get(Model, "new-000").pack)
        new_builder.build(session, pack)  # its files are in S3 from here on
        old_ms, new_ms = [], []
        for _ in range(repeats):
            for builder, times in ((old_builder, old_ms), (new_builder, new_ms)):
                started = time.perf_counter()
                builder.build(session, pack)
                times.append((time.perf_counter() - started) * 1000)
    return statistics.median(old_ms), statistics.median(new_ms), len(body)


def report(result: dict) -> str:
    new, old_, phases = result["new_ms"], result["old_ms"], result["phases"]
    lines = [f"| before (old pack choice and response) | {old_:.1f} | {1000 / old_:.1f} |",
             f"| after | {new:.1f} | {1000 / new:.1f} |"]
    phase_lines = [f"| {label} | {ms:.1f} |" for label, ms in sorted(phases.items(), key=lambda kv: -kv[1])]
    phase_lines.append(f"| everything else (multipart parse, staging, response) | {new - sum(phases.values()):.1f} |")
    return (f"_{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {result['models']:,} models registered, a "
            f"{result['bytes']:,}-byte TorchScript model, median of {result['registrations']} registrations each "
            f"way, interleaved, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (a shared machine); "
            "`python -m benchmarks.registration`._\n\n"
            "| path | ms per registration | registrations/s (one client) |\n|---|---|---|\n" + "\n".join(lines)
            + f"\n\nbefore / after: **{old_ / new:.2f}x**. Where the new path's time goes (medians, ms):\n\n"
            "| phase | ms |\n|---|---|\n" + "\n".join(phase_lines)
            + f"\n\nAfter a registration the reconciler rebuilds the model's pack (not in the figures above). With "
            f"a repository index naming {result['models']:,} models ({result['index_bytes'] / 2**20:.1f} MiB), one "
            f"rebuild took {result['build_old_ms']:.0f} ms before (index read twice) and "
            f"{result['build_new_ms']:.0f} ms after (read once): "
            f"**{result['build_old_ms'] / result['build_new_ms']:.2f}x**.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--registrations", type=int, default=20)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="registration-bench-") as workdir:
        result = run(args.models, args.registrations, Path(workdir))
    text = report(result)
    print(text)
    if not args.no_docs:
        section = f"{START}\n{text}\n{END}"
        doc = DOC.read_text()
        if START in doc:
            doc = doc[:doc.index(START)] + section + doc[doc.index(END) + len(END):]
        else:
            doc = doc.rstrip("\n") + "\n\n## Registrations: POST /api/v1/models at 10,000 models\n" + section + "\n"
        DOC.write_text(doc)


if __name__ == "__main__":
    main()
