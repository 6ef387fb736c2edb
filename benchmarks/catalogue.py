"""GET /api/v1/models at catalogue size: what one page costs with 10,000 models registered.

Models, packs, servers and placements are written straight into a real registry (SQLite by default, or
`--database-url` for PostgreSQL): no upload, validator or Triton runs. The app is the real one
(create_app, Flask test client, the real schema serialisation); the baseline, measured in the same run on
the same rows, is the listing as it was before (kept below as `old_list_models`, served on /bench/old-models
through the same decorators): every row loaded, every status computed in Python, then per pending model
three more queries. Each query's two answers are compared byte for byte before anything is timed.

    python -m benchmarks.catalogue                       # 10,000 models; writes docs/benchmarks.md
    python -m benchmarks.catalogue --models 2000 --no-docs
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

from apiflask import APIBlueprint
from flask import current_app
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, object_session

from control_plane.app import create_app
from control_plane.db import Model, ModelVersion, Pack, Placement, Server
from control_plane.schemas import ModelListQuery, ModelPage
from control_plane.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "benchmarks.md"
MARKERS = "<!-- catalogue-{}:start -->", "<!-- catalogue-{}:end -->"  # one section per backend
TOKEN = "catalogue-bench"
SIGNATURE = {"inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, 4]}],
             "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, 2]}]}
QUERIES = {  # what the catalogue's readers ask
    "first page (100)": {"per_page": 100},
    "page 50 of 100": {"per_page": 100, "page": 50},
    "locust catalogue: servable, 1,000": {"status": "servable", "per_page": 1000},
    "pending, 100": {"status": "pending", "per_page": 100},
    "fleet up's poll: servable total": {"status": "servable", "per_page": 1},
    "name prefix, 100": {"name_prefix": "model-01", "per_page": 100},
}


# ---- the baseline: the listing before control_plane/pending.py, verbatim but for names ------------------
def old_endpoints_by_pack(session: Session) -> dict[str, list[tuple[Placement, Server]]]:
    rows = session.execute(select(Placement, Server).join(Server, Server.name == Placement.server)
                           .where(Server.healthy.is_(True), Placement.state != "failed",
                                  Placement.loaded_generation >= 0)).all()
    served: dict[str, list[tuple[Placement, Server]]] = {}
    for placement, server in rows:
        served.setdefault(placement.pack, []).append((placement, server))
    return served


def old_model_status(model: Model, served) -> tuple[str, list]:
    if model.desired != "loaded":
        return "unloaded", []
    live = [s for p, s in served.get(model.pack or "", []) if p.loaded_generation >= model.joined_generation]
    live.sort(key=lambda server: hashlib.blake2b(f"{model.name}/{server.name}".encode(), digest_size=8).digest())
    return ("servable" if live else "pending"), live


def old_pending_reason(session: Session, model: Model) -> str:
    pack = session.get(Pack, model.pack) if model.pack else None
    if pack is None:
        return "not in a pack yet"
    if pack.built_generation < model.joined_generation:
        return f"pack {pack.name} is being built (generation {model.joined_generation}; built so far: " \
               f"{max(pack.built_generation, 0)})"
    placements = list(session.scalars(select(Placement).where(Placement.pack == pack.name,
                                                              Placement.retiring.is_(False))
                                      .order_by(Placement.server)))
    if pack.pending_reason and not placements:
        return pack.pending_reason
    if not placements:
        return "waiting for the reconciler to place its pack"
    parts = []
    for placement in placements:
        server = session.get(Server, placement.server)
        if server is not None and not server.healthy:
            parts.append(f"{placement.server}: server unhealthy ({server.last_error or 'not answering'})")
        elif placement.error:
            parts.append(f"{placement.server}: {placement.error}")
        else:
            parts.append(f"{placement.server}: loading generation {pack.built_generation}")
    return "; ".join(parts)


def old_model_out(model: Model, version: ModelVersion, served) -> dict:
    status, servers = old_model_status(model, served)
    session = object_session(model)
    reason = old_pending_reason(session, model) if status == "pending" and session is not None else None
    return {
        "name": model.name, "version": version.version, "sha256": version.sha256, "bytes": version.bytes,
        "format": version.format, "family": model.family, "pack": model.pack, "status": status,
        "pending_reason": reason, "signature": version.signature,
        "endpoints": [{"server": s.name, "grpc_url": s.grpc_url, "http_url": s.http_url} for s in servers],
        "request_parameters": {"model_id": model.name}, "created_at": model.created_at,
    }


old = APIBlueprint("old_models", __name__, url_prefix="/bench/old-models")


@old.get("")
@old.input(ModelListQuery, location="query", arg_name="query")
@old.output(ModelPage)
def old_list_models(query: ModelListQuery):
    with current_app.extensions["fleet"].sessions() as session:
        statement = select(Model, ModelVersion).join(
            ModelVersion, (ModelVersion.model == Model.name) & (ModelVersion.version == Model.current_version))
        if query.family:
            statement = statement.where(Model.family == query.family)
        if query.pack:
            statement = statement.where(Model.pack == query.pack)
        if query.name_prefix:
            statement = statement.where(Model.name.startswith(query.name_prefix, autoescape=True))
        served = old_endpoints_by_pack(session)
        rows = session.execute(statement.order_by(Model.name)).all()
        if query.status:
            rows = [(m, v) for m, v in rows if old_model_status(m, served)[0] == query.status]
        start = (query.page - 1) * query.per_page
        items = [old_model_out(m, v, served) for m, v in rows[start:start + query.per_page]]
        return {"items": items, "page": query.page, "per_page": query.per_page, "total": len(rows)}


# ---- the registry at size -----------------------------------------------------------------------------
def populate(sessions, models: int, pack_size: int, kind: str = "torchscript-cpu") -> None:
    """`models` models in packs of `pack_size` on two healthy servers and one dead one. Most packs are
    served; every 20th is one generation behind on a sync, every 33rd failed to load, every 50th is not
    built yet, every 40th has no room; one model in 25 is unloaded. All packs are of `kind` (family cpu)."""
    packs = (models + pack_size - 1) // pack_size
    now = datetime(2026, 11, 30, tzinfo=UTC)
    with sessions.begin() as s:
        s.execute(insert(Server), [
            {"name": n, "family": "cpu", "http_url": f"http://{n}:8000", "grpc_url": f"{n}:8001",
             "capacity_bytes": 64 * 2**30, "healthy": n != "c",
             "last_error": "connection refused" if n == "c" else None}
            for n in ("a", "b", "c")])
        s.execute(insert(Pack), [{"name": f"pack-{p:05d}", "family": "cpu", "kind": kind,
                                  "generation": 2, "built_generation": 1 if p % 50 == 7 else 2,
                                  "pending_reason": "no cpu server has 1 GB free" if p % 40 == 3 else None}
                                 for p in range(packs)])
        placements = []
        for p in range(packs):
            name = f"pack-{p:05d}"
            if p % 40 == 3:
                continue
            if p % 33 == 5:
                placements.append({"pack": name, "server": "a", "state": "failed", "loaded_generation": -1,
                                   "error": "load failed (HTTP 400): bad"})
                continue
            behind = p % 20 == 1
            for server in ("a", "b"):
                placements.append({"pack": name, "server": server, "state": "pending" if behind else "loaded",
                                   "loaded_generation": 1 if behind else 2,
                                   "error": "server has generation 1, waiting for 2: its sync is behind"
                                   if behind else None})
            if p % 10 == 0:
                placements.append({"pack": name, "server": "c", "state": "loaded", "loaded_generation": 2})
        s.execute(insert(Placement), placements)
        s.execute(insert(Model), [{"name": f"model-{m:05d}", "family": "cpu", "pack": f"pack-{m // pack_size:05d}",
                                   "current_version": 1, "desired": "unloaded" if m % 25 == 24 else "loaded",
                                   "joined_generation": 1 + m % 2, "created_at": now} for m in range(models)])
        s.execute(insert(ModelVersion), [{"model": f"model-{m:05d}", "version": 1, "sha256": f"{m:064x}",
                                          "bytes": 7000 + m, "s3_key": f"artifacts/model-{m:05d}/{m:064x}.pt",
                                          "signature": SIGNATURE, "format": "torchscript",
                                          "pack_kind": kind, "created_at": now}
                                         for m in range(models)])


EXPLAINED = (
    "Before: every matching row loaded and every status computed in Python for each page, then three queries "
    "per pending model on the page. After: filters (status too) and the total in SQL, then the page's rows and "
    "only their packs and placements: 4 queries a page whatever its size "
    "(`tests/control_plane/test_model_listing.py`). Both answers are compared equal before timing. What is left "
    "in a 1,000-item page is mostly rendering and validating the items (pydantic, apiflask), the same work "
    "before and after.")


@dataclass
class Timing:
    query: str
    items: int
    total: int
    old_ms: float
    new_ms: float

    @property
    def ratio(self) -> float:
        return self.old_ms / self.new_ms


def timed(client, path: str, repeats: int) -> tuple[float, dict]:
    """Median milliseconds of `repeats` GETs (after one warm-up), and the last body."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = client.get(path, headers=headers).json
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
        body = response.json
    return statistics.median(times), body


def run(models: int, pack_size: int, repeats: int, database_url: str | None, workdir: Path) -> list[Timing]:
    url = database_url or f"sqlite:///{workdir / 'registry.db'}"
    app = create_app(Settings(database_url=url, api_token=TOKEN, s3_endpoint_url="http://127.0.0.1:9",
                              work_dir=workdir / "work"), start_reconciler=False)
    app.register_blueprint(old)
    started = time.perf_counter()
    populate(app.extensions["fleet"].sessions, models, pack_size)
    print(f"registered {models:,} models in packs of {pack_size} straight into {url.split(':')[0]} "
          f"in {time.perf_counter() - started:.1f} s")
    client = app.test_client()
    timings = []
    for label, query in QUERIES.items():
        qs = urlencode(query)
        new_ms, new_body = timed(client, f"/api/v1/models?{qs}", repeats)
        old_ms, old_body = timed(client, f"/bench/old-models?{qs}", repeats)
        if new_body != old_body:
            raise AssertionError(f"{label}: the new listing differs from the old one")
        timings.append(Timing(label, len(new_body["items"]), new_body["total"], old_ms, new_ms))
        print(f"{label:36s} items {len(new_body['items']):5d} of {new_body['total']:6,d}   "
              f"old {old_ms:8.1f} ms   new {new_ms:7.1f} ms   x{old_ms / new_ms:.1f}")
    return timings


def write_docs(timings: list[Timing], models: int, pack_size: int, backend: str, repeats: int) -> None:
    rows = "\n".join(f"| {t.query} | {t.items:,} of {t.total:,} | {t.old_ms:,.1f} | {t.new_ms:,.1f} | "
                     f"{t.ratio:.1f}x |" for t in timings)
    start, end = (marker.format(backend) for marker in MARKERS)
    section = (f"{start}\n_{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {models:,} models in packs of {pack_size}, "
               f"{backend}, median of {repeats} GETs through the Flask test client, {os.cpu_count()} cores, load "
               f"average {os.getloadavg()[0]:.1f} (a shared machine); "
               f"`python -m benchmarks.catalogue{' --postgres' if backend == 'postgresql' else ''}`._\n\n"
               "| query | items of total | before (ms) | after (ms) | before / after |\n|---|---|---|---|---|\n"
               f"{rows}\n"
               f"{end}")
    text = DOC.read_text()
    if start in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    elif ends := [MARKERS[1].format(b) for b in ("sqlite", "postgresql") if MARKERS[1].format(b) in text]:
        last = max(text.index(other) + len(other) for other in ends)  # next to the other backend's section
        text = text[:last] + "\n\n" + section + text[last:]
    else:
        text = text.rstrip("\n") + "\n\n## Catalogue reads: GET /api/v1/models at 10,000 models\n" + EXPLAINED \
            + "\n\n" + section + "\n"
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--pack-size", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--database-url", help="an empty database (default: a new SQLite file)")
    parser.add_argument("--postgres", action="store_true", help="run on an embedded PostgreSQL (pgserver)")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="catalogue-bench-") as workdir:
        server = None
        if args.postgres:
            from fleet.postgres import EmbeddedPostgres

            server = EmbeddedPostgres(Path(workdir) / "pgdata")
            args.database_url = server.create_database()
        try:
            timings = run(args.models, args.pack_size, args.repeats, args.database_url, Path(workdir))
        finally:
            if server is not None:
                server.cleanup()
    if not args.no_docs:
        backend = (args.database_url or "sqlite").split(":")[0].split("+")[0]
        write_docs(timings, args.models, args.pack_size, backend, args.repeats)


if __name__ == "__main__":
    main()
