"""Who may see the status page and /metrics, and what they show when the database is down.

In-process app (real SQLite, and a real refused connection for the database-down case)."""
from __future__ import annotations

import socket

import pytest
from sqlalchemy.orm import sessionmaker

from control_plane.app import create_app
from control_plane.db import make_engine
from control_plane.settings import Settings

TOKEN = "status-access-token"
REMOTE = {"REMOTE_ADDR": "10.1.2.3"}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def app(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'registry.db'}", api_token=TOKEN,
                        s3_endpoint_url=f"http://127.0.0.1:{closed_port()}", work_dir=tmp_path / "work")
    return create_app(settings, start_reconciler=False)


def test_loopback_sees_the_page_without_a_token(app):
    page = app.test_client().get("/")
    assert page.status_code == 200 and "triton-fleet" in page.text


def test_others_are_sent_to_log_in_and_a_valid_token_becomes_an_httponly_cookie(app):
    client = app.test_client()
    first = client.get("/", environ_base=REMOTE)
    assert first.status_code == 302 and first.headers["Location"].endswith("/login")
    wrong = client.post("/login", data={"token": "nope"}, environ_base=REMOTE)
    assert wrong.status_code == 401 and "not valid" in wrong.text
    good = client.post("/login", data={"token": TOKEN}, environ_base=REMOTE)
    assert good.status_code == 302
    cookie = good.headers["Set-Cookie"]
    assert "fleet_token=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/", environ_base=REMOTE).status_code == 200
    assert client.get("/metrics", environ_base=REMOTE).status_code == 200, "the cookie also reads /metrics"
    client.post("/logout", environ_base=REMOTE)
    assert client.get("/", environ_base=REMOTE).status_code == 302


def test_metrics_on_the_api_port_need_the_token_even_from_loopback(app):
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and "fleet_models{" in ok.text


def test_every_response_carries_a_request_id_and_a_valid_one_is_echoed(app):
    client = app.test_client()
    assert client.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    refused = client.get("/api/v1/models", headers={"X-Request-Id": "no spaces allowed"})
    assert refused.status_code == 401 and len(refused.headers["X-Request-Id"]) == 32


def test_database_and_s3_down_the_page_and_metrics_stay_up_and_say_so(app):
    state = app.extensions["fleet"]
    state.sessions = sessionmaker(bind=make_engine(f"postgresql+psycopg://fleet@127.0.0.1:{closed_port()}/fleet"))
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200
    assert "the registry database is unavailable" in page.text and "<strong>object_store</strong>" in page.text
    assert "unknown: the registry is unavailable" in page.text
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert metrics.status_code == 200
    assert "fleet_registry_up 0.0" in metrics.text and "fleet_object_store_up 0.0" in metrics.text
    assert "fleet_models{" not in metrics.text, "no made-up state when the registry cannot be read"


def test_pending_models_are_counted_and_listed_by_why_they_wait(app):
    from control_plane.db import Model, Pack, Placement, Server

    with app.extensions["fleet"].sessions.begin() as s:
        s.add(Server(name="a", family="cpu", http_url="http://127.0.0.1:9", grpc_url="x", capacity_bytes=2**30))
        s.add(Server(name="gone", family="cpu", http_url="http://127.0.0.1:9", grpc_url="x", capacity_bytes=2**30,
                     healthy=False))
        s.add_all([Pack(name="built", family="cpu", kind="k", generation=1, built_generation=1),
                   Pack(name="stale", family="cpu", kind="k", generation=2, built_generation=1),
                   Pack(name="nowhere", family="cpu", kind="k", generation=1, built_generation=1,
                        pending_reason="no cpu server has 250 MB free; 2 servers, 50 MB free each"),
                   Pack(name="broken", family="cpu", kind="k", generation=1, built_generation=1)])
        s.flush()
        s.add_all([Placement(pack="built", server="a", state="loaded", loaded_generation=1),
                   Placement(pack="broken", server="a", state="failed", error="load failed (HTTP 400): bad")])
        s.add_all([Model(name="servable", pack="built", joined_generation=1),
                   Model(name="building", pack="stale", joined_generation=2),
                   Model(name="unplaced", pack="nowhere", joined_generation=1),
                   Model(name="failed", pack="broken", joined_generation=1),
                   Model(name="off", pack="built", joined_generation=1, desired="unloaded")])
    client = app.test_client()
    text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    for line in ('fleet_models{status="servable"} 1.0', 'fleet_models{status="pending"} 3.0',
                 'fleet_models{status="unloaded"} 1.0', 'fleet_models_pending{reason="building"} 1.0',
                 'fleet_models_pending{reason="unplaced"} 1.0', 'fleet_models_pending{reason="load_failed"} 1.0',
                 'fleet_models_pending{reason="loading"} 0.0', 'fleet_servers{health="unhealthy"} 1.0',
                 'fleet_pack_replicas{pack="built"} 1.0'):
        assert line in text, line
    page = client.get("/").text
    assert "a: load failed (HTTP 400): bad" in page, "the API's pending_reason text (control_plane/pending.py)"
    assert "no cpu server has 250 MB free; 2 servers, 50 MB free each" in page
    assert "gone (not ready)" in page
