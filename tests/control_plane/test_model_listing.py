"""GET /api/v1/models at size: filters (status included) and counts in SQL, a page reads only its own rows
and packs, in a fixed number of queries, and says exactly what GET /api/v1/models/{name} says of each model.

In-process app on a real registry, on each database (FLEET_TEST_DATABASES); rows are written straight into
the registry, so no upload, validator or server runs.
"""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import event

from control_plane.app import create_app
from control_plane.db import Model, ModelVersion, Pack, Placement, Server
from control_plane.settings import Settings

TOKEN = "listing-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SIGNATURE = {"inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, 4]}],
             "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, 2]}]}
PACKS = 12  # 5 members each: packs 0-5 served, 6-7 one generation behind, 8 failed, 9 unbuilt, 10 unplaced,
MEMBERS = 5  # 11 on a server that is down; one model in three of pack 1 unloaded; plus two cuda models


@pytest.fixture(scope="module")
def app(tmp_path_factory, database_url):
    work = tmp_path_factory.mktemp("listing")
    app = create_app(Settings(database_url=database_url, api_token=TOKEN, s3_endpoint_url="http://127.0.0.1:9",
                              work_dir=work), start_reconciler=False)
    with app.extensions["fleet"].sessions.begin() as s:
        s.add_all([Server(name="a", family="cpu", http_url="http://a:8000", grpc_url="a:8001", capacity_bytes=2**30),
                   Server(name="b", family="cpu", http_url="http://b:8000", grpc_url="b:8001", capacity_bytes=2**30),
                   Server(name="down", family="cpu", http_url="http://d:8000", grpc_url="d:8001",
                          capacity_bytes=2**30, healthy=False, last_error="connection refused")])
        s.add_all([Pack(name=f"p{i:02d}", family="cpu", kind="k", generation=2, built_generation=1 if i == 9 else 2,
                        pending_reason="no cpu server has 1 GB free" if i == 10 else None) for i in range(PACKS)])
        s.flush()
        for i in range(6):
            s.add_all([Placement(pack=f"p{i:02d}", server="a", state="loaded", loaded_generation=2),
                       Placement(pack=f"p{i:02d}", server="b", state="loaded", loaded_generation=2)])
        s.add_all([Placement(pack="p06", server="a", state="pending", loaded_generation=1,
                             error="server has generation 1, waiting for 2: its sync is behind"),
                   Placement(pack="p07", server="b", state="pending", loaded_generation=1),
                   Placement(pack="p08", server="a", state="failed", error="load failed (HTTP 400): bad"),
                   Placement(pack="p09", server="a", state="loaded", loaded_generation=1),
                   Placement(pack="p11", server="down", state="loaded", loaded_generation=2)])
        for i in range(PACKS):
            for m in range(MEMBERS):
                name = f"m{m}-of-{i:02d}"  # names interleave packs, so pages mix them
                s.add(Model(name=name, family="cpu", pack=f"p{i:02d}", joined_generation=2 if m % 2 else 1,
                            desired="unloaded" if i == 1 and m % 3 == 0 else "loaded",
                            created_at=datetime(2026, 11, 30, tzinfo=UTC)))
        for name in ("cuda-x", "cuda_y"):  # '_' must match itself in a name prefix, not any character
            s.add(Model(name=name, family="gpu", pack=None, joined_generation=0))
        s.flush()
        for model in s.query(Model):
            s.add(ModelVersion(model=model.name, version=1, sha256="0" * 64, bytes=7000, s3_key=f"k/{model.name}",
                               signature=SIGNATURE, format="torchscript", pack_kind="k"))
    return app


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


def every_model(client) -> dict[str, dict]:
    """Each model as GET /api/v1/models/{name} shows it: the per-model read the listing must agree with."""
    names = [item["name"] for item in client.get("/api/v1/models?per_page=1000", headers=AUTH).json["items"]]
    return {name: client.get(f"/api/v1/models/{name}", headers=AUTH).json for name in names}


@pytest.fixture(scope="module")
def models(client):
    return every_model(client)


def test_the_fixture_covers_every_status_and_reason(models):
    statuses = [m["status"] for m in models.values()]
    assert statuses.count("servable") == 6 * MEMBERS - 2 + 3 * 3, "packs 0-5 (less 2 unloaded); 6, 7, 9: older joins"
    assert statuses.count("unloaded") == 2
    reasons = {m["pending_reason"] for m in models.values() if m["status"] == "pending"}
    assert {"not in a pack yet", "pack p09 is being built (generation 2; built so far: 1)",
            "no cpu server has 1 GB free", "a: server has generation 1, waiting for 2: its sync is behind",
            "b: loading generation 2", "a: load failed (HTTP 400): bad",
            "down: server unhealthy (connection refused)"} == reasons


@pytest.mark.parametrize("query", [
    {}, {"per_page": 7}, {"per_page": 7, "page": 3}, {"per_page": 7, "page": 99},
    {"status": "servable"}, {"status": "servable", "per_page": 4, "page": 2}, {"status": "pending"},
    {"status": "unloaded"}, {"family": "gpu"}, {"family": "gpu", "status": "servable"},
    {"pack": "p06"}, {"pack": "p06", "status": "pending"}, {"name_prefix": "m1-"}, {"name_prefix": "cuda_"},
    {"name_prefix": "m2", "status": "servable", "per_page": 3, "page": 2},
])
def test_a_page_holds_exactly_the_filtered_models_in_name_order_with_their_total(client, models, query):
    def wanted(model: dict) -> bool:
        return (model["status"] == query.get("status", model["status"])
                and model["family"] == query.get("family", model["family"])
                and model["pack"] == query.get("pack", model["pack"])
                and model["name"].startswith(query.get("name_prefix", "")))
    matching = [models[name] for name in sorted(models) if wanted(models[name])]
    page, per_page = query.get("page", 1), query.get("per_page", 100)
    response = client.get("/api/v1/models", query_string=query, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json == {"items": matching[(page - 1) * per_page:page * per_page], "page": page,
                             "per_page": per_page, "total": len(matching)}


def test_a_page_costs_the_same_few_queries_however_many_models_and_packs_it_holds(app, client):
    engine = app.extensions["fleet"].sessions.kw["bind"]
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        small = len(client.get("/api/v1/models?per_page=2&name_prefix=m", headers=AUTH).json["items"])
        small_queries, statements[:] = len(statements), []
        large = len(client.get("/api/v1/models?per_page=1000", headers=AUTH).json["items"])
        large_queries = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert (small, large) == (2, PACKS * MEMBERS + 2)
    assert small_queries == large_queries == 4, "count, page, its packs, their placements: " + "\n".join(statements)


def test_the_status_page_counts_and_words_every_model_as_the_api_does(app, models):
    from control_plane.observability.snapshot import take_snapshot

    snap = take_snapshot(app.extensions["fleet"], check_s3=False)
    statuses = [m["status"] for m in models.values()]
    assert snap.models_by_status == {s: statuses.count(s) for s in set(statuses)}
    assert len(snap.pending) == statuses.count("pending")
    for listed in snap.pending:
        assert listed.detail == models[listed.name]["pending_reason"], listed.name
    assert snap.pending_by_reason == {"no_pack": 2, "building": 2, "unplaced": 10, "load_failed": 5,
                                      "sync_failed": 2, "loading": 2}
