"""The reconciler's stub probe, on a real registry (SQLite) with Triton's answers given: which answers
mean "reload the pack" and which change nothing. The real thing: test_stub_death.py."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import requests
from sqlalchemy import select

from control_plane.db import AuditEntry, Model, ModelVersion, Pack, Placement, Server, make_engine, make_sessionmaker
from control_plane.migrate import upgrade
from control_plane.reconcile.stub_probe import StubProbe
from control_plane.reconcile.workers import AdminClients, Workers
from control_plane.settings import Settings
from model_repository.contract import PROBE_MEMBER, ErrorCode, tagged


@dataclass
class Answer:
    status_code: int
    text: str


class FakeTriton:
    """Answers the probe's infer, the unload and the readiness check like tritonserver would."""

    def __init__(self, infer):
        self.infer, self.calls = infer, []

    def post(self, url, json=None, headers=None, timeout=None):
        self.calls.append(("POST", url, json))
        if url.endswith("/infer"):
            if isinstance(self.infer, Exception):
                raise self.infer
            return self.infer
        return Answer(200, "")

    def get(self, url, timeout=None):
        self.calls.append(("GET", url, None))
        return Answer(400, "")


@pytest.fixture
def sessions(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    signature = {"inputs": [{"name": "INPUT__0", "dtype": "INT64", "shape": [-1, 4], "value_range": [5, 9]}],
                 "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, 2]}]}
    with sessions.begin() as session:
        session.add(Pack(name="p-0000", family="cpu", kind="k", generation=3, built_generation=3))
        session.add(Server(name="s1", family="cpu", http_url="http://triton", grpc_url="triton:1",
                           capacity_bytes=2**30, healthy=True))
        session.flush()
        session.add(Model(name="m1", family="cpu", current_version=1, pack="p-0000", joined_generation=3))
        session.flush()
        session.add(ModelVersion(model="m1", version=1, sha256="0" * 64, bytes=10, s3_key="k", signature=signature,
                                 pack_kind="k"))
        session.add(Placement(pack="p-0000", server="s1", state="loaded", loaded_generation=3))
    return sessions


def probe(sessions, triton: FakeTriton, interval_s: float = 0.001) -> StubProbe:
    """The stub probe alone, speaking to `triton` through the admin client."""
    settings = Settings(database_url="sqlite://", stub_probe_interval_s=interval_s, api_token="t")
    return StubProbe(sessions, settings, AdminClients(None, http=triton), Workers(2, "probe"))


def placement(sessions) -> Placement:
    with sessions() as session:
        return session.get(Placement, ("p-0000", "s1"))


@pytest.mark.parametrize("answer", [
    Answer(500, '{"error":"Stub process \'p-0000_0_0\' is not healthy."}'),
    Answer(404, '{"error":"Request for unknown model: \'p-0000\' is not found"}'),
    Answer(400, '{"error":"model \'p-0000\' is not ready"}'),
])
def test_a_pack_whose_stub_does_not_answer_is_unloaded_and_marked_for_reload(sessions, answer):
    triton = FakeTriton(answer)
    probe(sessions, triton).update()
    after = placement(sessions)
    assert after.state == "pending" and after.loaded_generation == -1 and "stub probe failed" in after.error
    infer = next(c for c in triton.calls if c[1].endswith("/infer"))
    assert infer[1] == "http://triton/v2/models/p-0000/infer"
    assert infer[2]["parameters"] == {"model_id": PROBE_MEMBER}
    assert infer[2]["inputs"] == [{"name": "INPUT__0", "datatype": "INT64", "shape": [1, 4], "data": [0] * 4}]
    assert any(c[1].endswith("/v2/repository/models/p-0000/unload") for c in triton.calls)
    with sessions() as session:
        assert session.scalars(select(AuditEntry.action)).all() == ["pack.unhealthy"]


@pytest.mark.parametrize("answer", [
    Answer(404, json.dumps({"error": tagged(ErrorCode.UNKNOWN_MEMBER, f"model '{PROBE_MEMBER}' is not in pack "
                                                                      "'p-0000'; ask the control plane")})),
    # a pack built before error codes: its runtime's words for the same refusal
    Answer(404, f'{{"error":"model \'{PROBE_MEMBER}\' is not in pack \'p-0000\'; ask the control plane"}}'),
    requests.ConnectionError("refused"),
    requests.ReadTimeout("busy"),
])
def test_a_live_stub_or_an_inconclusive_probe_changes_nothing(sessions, answer):
    triton = FakeTriton(answer)
    probe(sessions, triton).update()
    after = placement(sessions)
    assert after.state == "loaded" and after.loaded_generation == 3
    assert not any("/repository/" in c[1] for c in triton.calls)


def test_the_probe_is_off_at_interval_zero_and_rate_limited_otherwise(sessions):
    triton = FakeTriton(Answer(500, "Stub process is not healthy"))
    probe(sessions, triton, interval_s=0).update()
    assert triton.calls == []
    hourly = probe(sessions, triton, interval_s=3600)
    hourly.update()
    calls = len(triton.calls)
    hourly.update()
    assert calls > 0 and len(triton.calls) == calls
