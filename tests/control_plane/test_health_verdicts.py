"""When the health thread calls a server dead: at once for one that refuses connections, only after the
longer slow window for one that accepts connections but answers late (a busy server on a loaded machine)."""
from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest

from control_plane.db import Server, make_engine, make_sessionmaker
from control_plane.migrate import upgrade
from control_plane.reconcile.health import ServerHealth
from control_plane.reconcile.workers import AdminClients, Workers
from control_plane.settings import Settings
from fleet.triton_server import free_port


@pytest.fixture
def silent_server():
    """A socket that accepts connections into its backlog and never answers: a hung or very busy server."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def checker(tmp_path, **settings) -> ServerHealth:
    """The health manager alone, on a real registry: it needs the servers and their answers, nothing else."""
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    upgrade(engine)
    return ServerHealth(make_sessionmaker(engine), Settings(api_token="t", **settings), AdminClients(None),
                        Workers(4, "health"))


def add_server(health: ServerHealth, name: str, http_url: str, seen_ago_s: float) -> None:
    with health.sessions.begin() as session:
        session.add(Server(name=name, family="cpu", http_url=http_url, grpc_url="127.0.0.1:1", capacity_bytes=2**30,
                           healthy=True, last_seen=datetime.now(UTC) - timedelta(seconds=seen_ago_s)))


def verdicts(health: ServerHealth) -> dict[str, tuple[bool, str | None]]:
    with health.sessions() as session:
        return {s.name: (s.healthy, s.last_error) for s in session.query(Server)}


def test_a_refusing_server_is_dead_after_the_short_window_and_a_silent_one_only_after_the_slow_window(
        tmp_path, silent_server):
    health = checker(tmp_path, server_dead_after_s=1.0, server_slow_dead_after_s=60.0)
    add_server(health, "refusing", f"http://127.0.0.1:{free_port()}", seen_ago_s=5)
    add_server(health, "silent", silent_server, seen_ago_s=5)
    health.update()
    found = verdicts(health)
    assert found["refusing"][0] is False and found["refusing"][1].startswith("unreachable")
    assert found["silent"][0] is True, "5 s without an answer is inside the 60 s slow window"
    assert found["silent"][1].startswith("slow")


def test_a_silent_server_past_the_slow_window_is_dead(tmp_path, silent_server):
    health = checker(tmp_path, server_dead_after_s=1.0, server_slow_dead_after_s=3.0)
    add_server(health, "silent", silent_server, seen_ago_s=5)
    health.update()
    assert verdicts(health)["silent"][0] is False
