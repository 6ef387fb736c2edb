"""Several control-plane replicas on one PostgreSQL, proved with real processes: two `fleet control-plane
serve` processes share a database, SeaweedFS and (where a test needs them) two tritonservers.

Each test gets its own database, its own replicas and servers (nothing carries over between tests); the
PostgreSQL and SeaweedFS servers are this module's own, because two tests stop them. Clients fail over
between the replicas the way a load balancer in front of them would: a refused connection or a 503 is
tried on the other replica.
"""
from __future__ import annotations

import collections
import os
import random
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from sqlalchemy import text

from control_plane.db import make_engine
from control_plane.registry import artifacts_prefix
from control_plane.settings import Settings
from fleet.postgres import EmbeddedPostgres
from fleet.seaweedfs import SeaweedS3
from fleet.triton_server import TritonServer, free_port
from fleet.waiting import wait_for
from model_repository.generator import example_inputs
from model_repository.manifest import Manifest, ModelEntry
from model_repository.s3_sync import S3Location, read_remote_index

from .conftest import ADMIN_KEY, TOKEN, ControlPlane
from .test_api_e2e import signature_of

pytestmark = pytest.mark.slow
BUCKET = "ha-models"


@dataclass
class Replicas:
    """Two (or more) control planes on one database, and the servers they manage."""

    planes: list[ControlPlane]
    database_url: str
    s3: SeaweedS3
    servers: dict[str, TritonServer] = field(default_factory=dict)

    def readiness(self) -> list[dict | None]:
        bodies = []
        for cp in self.planes:
            try:
                bodies.append(requests.get(f"{cp.url}/readyz", timeout=5).json())
            except (requests.RequestException, ValueError):
                bodies.append(None)
        return bodies

    def leaders(self) -> list[int]:
        return [k for k, body in enumerate(self.readiness()) if body and body.get("leader")]

    def sql(self, statement: str, **params) -> list[tuple]:
        engine = make_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(text(statement), params)]
        finally:
            engine.dispose()

    def call(self, method: str, path: str, prefer: int = 0, deadline_s: float = 120.0,
             **kwargs) -> requests.Response:
        """One request, failing over to the next replica on a refused connection or a 503."""
        deadline = time.monotonic() + deadline_s
        attempt = 0
        while True:
            cp = self.planes[(prefer + attempt) % len(self.planes)]
            attempt += 1
            try:
                with cp.api() as session:  # one connection per call, closed at once (no idle keep-alives)
                    session.headers["Connection"] = "close"
                    response = session.request(method, f"{cp.url}/api/v1{path}", timeout=120, **kwargs)
                if response.status_code != 503 or time.monotonic() > deadline:
                    return response
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1 * min(attempt, 10))


def register(replicas: Replicas, name: str, entry: ModelEntry, data: bytes, prefer: int) -> requests.Response:
    return replicas.call("POST", "/models", prefer=prefer, data={"name": name, "signature": signature_of(entry)},
                         files={"artifact": ("model.pt", data)})


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """This module's own PostgreSQL and SeaweedFS (tests here stop and restart them)."""
    root = tmp_path_factory.mktemp("ha-services")
    postgres = EmbeddedPostgres(root / "pgdata")
    s3 = SeaweedS3(root / "seaweed")
    s3.start()
    s3.create_bucket(BUCKET)
    yield postgres, s3
    s3.stop()
    postgres.cleanup()


@pytest.fixture
def make_replicas(tmp_path, services):
    """Start N replicas on a fresh database (and `tritons` servers registered through them)."""
    postgres, s3 = services
    started: list[Replicas] = []

    def start(count: int = 2, tritons: int = 0, **settings: object) -> Replicas:
        postgres.start()  # a test that stopped it may have failed before starting it again
        database_url = postgres.create_database()
        env = {**os.environ, **s3.environment(), "FLEET_API_TOKEN": TOKEN, "FLEET_TRITON_ADMIN_KEY": ADMIN_KEY,
               "FLEET_DATABASE_URL": database_url, "FLEET_REPOSITORY_URI": f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}",
               "FLEET_S3_ENDPOINT_URL": s3.endpoint_url, "FLEET_REPOSITORY_ROOT": str(tmp_path),
               "FLEET_RECONCILE_INTERVAL_S": "0.5", "FLEET_SERVER_DEAD_AFTER_S": "3",
               "FLEET_LEADER_HEARTBEAT_S": "0.5", "PYTHONSAFEPATH": "1",
               **{f"FLEET_{key.upper()}": str(value) for key, value in settings.items()}}
        planes = [ControlPlane(f"http://127.0.0.1:{free_port()}", {**env, "FLEET_WORK_DIR": str(tmp_path / f"work{k}")},
                               tmp_path / f"control-plane-{k}.log") for k in range(count)]
        replicas = Replicas(planes, database_url, s3)
        started.append(replicas)
        for cp in planes:
            cp.start()
        for k in range(tritons):
            repo = tmp_path / f"triton-{k}" / "repository"
            repo.mkdir(parents=True)
            server = TritonServer(repo, admin_key=ADMIN_KEY).start()
            replicas.servers[f"triton-{k}"] = server
            response = replicas.call("POST", "/servers", prefer=k, json={
                "name": f"triton-{k}", "family": "cpu", "http_url": server.http_url, "grpc_url": server.grpc_url,
                "capacity_bytes": 8 * 2**30, "repository_path": str(repo)})
            assert response.status_code == 201, response.text
        return replicas

    yield start
    for replicas in started:
        for cp in replicas.planes:
            cp.stop()
        for server in replicas.servers.values():
            server.stop()


def kill(cp: ControlPlane) -> None:
    os.killpg(cp.process.pid, signal.SIGKILL)
    cp.process.wait()


def test_exactly_one_replica_leads_and_a_clean_stop_hands_over(make_replicas):
    replicas = make_replicas(count=3)
    assert len(wait_for(lambda: replicas.leaders() or None, 15)) == 1
    bodies = replicas.readiness()
    assert [b["status"] for b in bodies] == ["ready"] * 3
    assert all(b["leadership"]["mechanism"] == "postgresql advisory lock" for b in bodies)
    leader = replicas.leaders()[0]
    replicas.planes[leader].stop()  # SIGTERM: releases the lock on the way out
    new = wait_for(lambda: [k for k in replicas.leaders() if k != leader] or None, 10)
    assert len(new) == 1


def test_200_concurrent_registrations_over_two_replicas_land_exactly_once_in_packs_that_never_overfill(
        make_replicas, generated_models: Path):
    entries = Manifest.read(generated_models).models
    blobs = {e.id: (generated_models / e.file).read_bytes() for e in entries}
    pack_size = 8
    pack_max_bytes = 5 * sorted(len(b) for b in blobs.values())[len(blobs) // 2]  # both caps bind
    replicas = make_replicas(count=2, pack_size=pack_size, pack_max_bytes=pack_max_bytes)

    jobs = [(f"many-{k:03d}", entries[k % 60]) for k in range(120)]            # 120 distinct models
    jobs += [(f"many-{k:03d}", entries[k % 60]) for k in range(0, 120, 2)]     # 60 same-content repeats
    jobs += [(f"clash-{k}", entries[k]) for k in range(10)]                    # 10 names, each with two
    jobs += [(f"clash-{k}", entries[59 - k]) for k in range(10)]               # different artifacts
    assert len(jobs) == 200
    random.Random(14).shuffle(jobs)
    barrier = threading.Barrier(24)

    def one(job: tuple[int, tuple[str, ModelEntry]]):
        k, (name, entry) = job
        if k < 24:
            barrier.wait(timeout=60)  # the first 24 leave together
        return name, entry, register(replicas, name, entry, blobs[entry.id], prefer=k % 2)

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(one, enumerate(jobs)))

    codes: dict[str, list[int]] = collections.defaultdict(list)
    winners = {}
    for name, entry, response in results:
        codes[name].append(response.status_code)
        if response.status_code == 201:
            winners[name] = entry.sha256
    for name, got in codes.items():
        expected = {"clash": [201, 409]}.get(name.split("-")[0], [200, 201] if len(got) == 2 else [201])
        assert sorted(got) == expected, (name, got)

    registered = replicas.sql("SELECT m.name, v.sha256 FROM models m JOIN model_versions v ON v.model = m.name")
    assert dict(registered) == winners and len(registered) == 130
    audits = collections.Counter(s for (s,) in replicas.sql(
        "SELECT subject FROM audit_log WHERE action = 'model.register'"))
    assert set(audits.values()) == {1} and len(audits) == 130, "each model registered exactly once"
    packs = replicas.sql("SELECT m.pack, count(*), sum(v.bytes) FROM models m JOIN model_versions v "
                         "ON v.model = m.name AND v.version = m.current_version GROUP BY m.pack")
    assert all(n <= pack_size for _, n, _ in packs), packs
    assert all(b <= pack_max_bytes or n == 1 for _, n, b in packs), (pack_max_bytes, packs)
    assert any(n == pack_size for _, n, _ in packs) and any(n < pack_size and b + min(map(len, blobs.values()))
                                                            > pack_max_bytes for _, n, b in packs), \
        "both rules were exercised"
    generations = replicas.sql("SELECT p.name, p.generation, count(m.name) FROM packs p "
                               "LEFT JOIN models m ON m.pack = p.name GROUP BY p.name, p.generation")
    assert all(generation >= members for _, generation, members in generations), \
        "every join bumped its pack's generation (no lost update between replicas)"
    for name in [n for n in codes if n.startswith("clash-")]:
        folder = artifacts_prefix(Settings(repository_uri=replicas.planes[0].env["FLEET_REPOSITORY_URI"]))
        keys = [o["Key"] for o in replicas.s3.client().list_objects_v2(
            Bucket=BUCKET, Prefix=f"{folder}{name}/").get("Contents", [])]
        assert keys == [f"{folder}{name}/{winners[name]}.pt"], (name, keys)


def test_the_leader_killed_while_hundreds_of_models_register_loses_nothing_and_all_become_servable(
        make_replicas, generated_models: Path):
    entries = Manifest.read(generated_models).models
    blobs = {e.id: (generated_models / e.file).read_bytes() for e in entries}
    replicas = make_replicas(count=2, tritons=2, pack_size=100, stub_probe_interval_s=0)
    leader = wait_for(lambda: replicas.leaders() or None, 15)[0]
    # 400 registrations into packs of 100, the leader killed after 100: every pack kind fills and spills
    # over while the leader dies (1,000 took 117 s here and proved nothing more).
    total, kill_after = 400, 100
    jobs = [(f"bulk-{k:04d}", entries[k % 60]) for k in range(total)]
    done = collections.Counter()
    done_lock = threading.Condition()

    def one(job: tuple[int, tuple[str, ModelEntry]]):
        k, (name, entry) = job
        response = register(replicas, name, entry, blobs[entry.id], prefer=k % 2)
        with done_lock:
            done[response.status_code] += 1
            done_lock.notify_all()
        return name, response

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, job) for job in enumerate(jobs)]
        with done_lock:
            assert done_lock.wait_for(lambda: sum(done.values()) >= kill_after, timeout=600)
        kill(replicas.planes[leader])
        killed_at = time.monotonic()
        survivor = 1 - leader
        wait_for(lambda: replicas.readiness()[survivor]["leader"], 15, interval_s=0.05)
        takeover_s = time.monotonic() - killed_at
        results = [f.result() for f in futures]
    took = time.monotonic() - started

    assert all(r.status_code in (200, 201) for _, r in results), \
        [(n, r.status_code, r.text[:200]) for n, r in results if r.status_code not in (200, 201)][:5]
    registered = dict(replicas.sql("SELECT m.name, v.sha256 FROM models m JOIN model_versions v "
                                   "ON v.model = m.name"))
    assert registered == {name: entry.sha256 for name, entry in jobs}, "nothing lost, nothing extra"
    audits = collections.Counter(s for (s,) in replicas.sql(
        "SELECT subject FROM audit_log WHERE action = 'model.register'"))
    assert len(audits) == total and set(audits.values()) == {1}, "no duplicates"
    sizes = [n for (n,) in replicas.sql("SELECT count(*) FROM models GROUP BY pack")]
    assert max(sizes) <= 100

    def all_servable():
        listed = replicas.call("GET", "/models", prefer=survivor,
                               params={"name_prefix": "bulk-", "status": "servable", "per_page": 1})
        return listed.json()["total"] == total
    wait_for(all_servable, 900, interval_s=2)
    servable_s = time.monotonic() - killed_at
    # Every pack is still published, including those the killed leader built: publishing is per pack, so
    # the new leader's builds never delete the old leader's.
    location = S3Location.parse(replicas.planes[survivor].env["FLEET_REPOSITORY_URI"])
    index = read_remote_index(replicas.s3.client(), location) or {}
    packs = {pack for (pack,) in replicas.sql("SELECT DISTINCT pack FROM models")}
    assert packs <= {path.split("/", 1)[0] for path in index}, sorted(packs - {p.split("/", 1)[0] for p in index})
    for pack in packs:
        replicas.s3.client().head_object(Bucket=BUCKET, Key=location.key(f"{pack}/config.pbtxt"))
    for name, entry in random.Random(1).sample(jobs, 5):
        body = replicas.call("GET", f"/models/{name}", prefer=survivor).json()
        client = grpcclient.InferenceServerClient(body["endpoints"][0]["grpc_url"])
        try:
            (x,) = example_inputs(entry, batch=1)
            tensor = grpcclient.InferInput("INPUT__0", list(x.shape), entry.inputs[0].dtype)
            tensor.set_data_from_numpy(x)
            out = client.infer(body["pack"], [tensor], parameters={"model_id": name}).as_numpy("OUTPUT__0")
            assert out.shape[0] == 1 and np.isfinite(out).all()
        finally:
            client.close()
    print(f"\n{total} registrations over 2 replicas in {took:.0f} s ({dict(done)}); leader SIGKILLed after "
          f"{kill_after}; new leader after {takeover_s:.2f} s; all {total} servable {servable_s:.0f} s after the kill")


def registering_while(replicas: Replicas, generated_models: Path, prefix: str, count: int, outage,
                      after: int = 6) -> dict[str, requests.Response]:
    """Register `count` models over both replicas (no failover: each answer is the replica's own), and run
    `outage()` once `after` of them have answered, while the rest are in flight."""
    entries = Manifest.read(generated_models).models
    answered = threading.Semaphore(0)

    def one(k: int) -> tuple[str, requests.Response]:
        entry, cp = entries[k % 60], replicas.planes[k % 2]
        with cp.api() as session:
            session.headers["Connection"] = "close"
            response = session.post(f"{cp.url}/api/v1/models", timeout=120, data={
                "name": f"{prefix}-{k:03d}", "signature": signature_of(entry)},
                files={"artifact": ("model.pt", (generated_models / entry.file).read_bytes())})
        answered.release()
        return f"{prefix}-{k:03d}", response

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, k) for k in range(count)]
        for _ in range(after):
            assert answered.acquire(timeout=120)
        outage()
        return dict(f.result() for f in futures)


def assert_nothing_half_registered(replicas: Replicas) -> None:
    """Every model row has its one version, a pack and its artifact in S3; every register audit a model."""
    rows = replicas.sql("SELECT m.name, m.pack, count(v.version), min(v.s3_key) FROM models m "
                        "LEFT JOIN model_versions v ON v.model = m.name GROUP BY m.name, m.pack")
    client = replicas.s3.client()
    for name, pack, versions, key in rows:
        assert pack and versions == 1, (name, pack, versions)
        client.head_object(Bucket=BUCKET, Key=key)
    audits = collections.Counter(s for (s,) in replicas.sql(
        "SELECT subject FROM audit_log WHERE action = 'model.register'"))
    assert audits == collections.Counter(name for name, *_ in rows)


def test_postgresql_down_for_10_s_mid_registration_gives_503_with_a_reason_then_recovers_without_a_restart(
        make_replicas, generated_models: Path, services):
    postgres, _ = services
    replicas = make_replicas(count=2)
    pids = [cp.process.pid for cp in replicas.planes]
    outage: dict = {}

    def stop_postgres() -> None:
        postgres.stop()
        outage["at"] = time.monotonic()
        # While it is down: both replicas answer 503 with the reason, say so on /readyz, and stop leading.
        for cp in replicas.planes:
            listing = cp.api().get(f"{cp.url}/api/v1/models", timeout=60)
            assert listing.status_code == 503 and listing.json()["error"]["details"]["reason"], listing.text
        bodies = wait_for(lambda: (b := replicas.readiness()) and all(x and x["status"] == "unavailable"
                                                                        for x in b) and b, 10)
        outage["readiness"] = bodies
        wait_for(lambda: not replicas.leaders(), 10)

    try:
        answers = registering_while(replicas, generated_models, "pgdown", 40, stop_postgres)
    finally:
        if "at" in outage:
            time.sleep(max(0.0, 10 - (time.monotonic() - outage["at"])))  # the outage lasts 10 s (not a sync wait)
        postgres.start()
    assert all("database" in b["problems"] for b in outage["readiness"])
    codes = collections.Counter(r.status_code for r in answers.values())
    assert set(codes) <= {201, 503} and codes[503] > 0 and codes[201] >= 6, codes
    for response in answers.values():
        if response.status_code == 503:
            error = response.json()["error"]
            assert error["code"] == "database_unavailable" and error["details"]["reason"], error

    wait_for(lambda: all(b and b["status"] == "ready" for b in replicas.readiness()), 60)
    assert len(wait_for(lambda: replicas.leaders() or None, 15)) == 1
    assert [cp.process.pid for cp in replicas.planes] == pids and all(cp.process.poll() is None
                                                                      for cp in replicas.planes)
    assert_nothing_half_registered(replicas)
    registered = {n for (n,) in replicas.sql("SELECT name FROM models")}
    assert {n for n, r in answers.items() if r.status_code == 201} <= registered
    # The refused ones go through once the database is back (or turn out to have committed: 200).
    entries = Manifest.read(generated_models).models
    for name, response in answers.items():
        if response.status_code == 503:
            entry = entries[int(name.rsplit("-", 1)[1]) % 60]
            again = register(replicas, name, entry, (generated_models / entry.file).read_bytes(), prefer=0)
            assert again.status_code in (200, 201), again.text
    assert {n for (n,) in replicas.sql("SELECT name FROM models")} == set(answers)
    assert_nothing_half_registered(replicas)
    print(f"\nPostgreSQL down 10 s mid-registration: {dict(codes)}; recovered without restarts")


def test_seaweedfs_down_mid_registration_is_a_clear_error_and_nothing_is_half_registered(
        make_replicas, generated_models: Path, services):
    _, s3 = services
    replicas = make_replicas(count=2)
    try:
        answers = registering_while(replicas, generated_models, "s3down", 30, s3.stop)
    finally:
        s3.start()
    codes = collections.Counter(r.status_code for r in answers.values())
    assert set(codes) <= {201, 503} and codes[503] > 0, codes
    for name, response in answers.items():
        if response.status_code == 503:
            error = response.json()["error"]
            assert error["code"] == "object_store_unavailable" and "nothing was registered" in error["message"]
            assert replicas.call("GET", f"/models/{name}").status_code == 404
    assert {n for (n,) in replicas.sql("SELECT name FROM models")} == \
        {n for n, r in answers.items() if r.status_code == 201}
    assert_nothing_half_registered(replicas)
    print(f"\nSeaweedFS stopped mid-registration: {dict(codes)}")


def test_a_follower_answers_the_load_test_catalogue_exactly_as_the_leader(make_replicas, generated_models: Path):
    """The EKS locust Jobs read the catalogue through the control-plane Service, which may pick either
    replica: on one PostgreSQL a follower's answer (registry, placements, health) is the leader's."""
    from loadtest.catalogue import load_catalogue

    replicas = make_replicas(count=2, tritons=1, stub_probe_interval_s=0)
    leader = wait_for(lambda: replicas.leaders() or None, 15)[0]
    follower = 1 - leader
    entries = [e for e in Manifest.read(generated_models).models if e.architecture == "mlp"][:3]
    for k, entry in enumerate(entries):
        response = register(replicas, entry.id, entry, (generated_models / entry.file).read_bytes(), prefer=k % 2)
        assert response.status_code == 201, response.text

    def servable() -> bool:
        listed = replicas.call("GET", "/models", prefer=follower, params={"status": "servable", "per_page": 1})
        return listed.json()["total"] == len(entries)
    wait_for(servable, 300, interval_s=1)
    catalogues = [load_catalogue(replicas.planes[k].url, 100, TOKEN) for k in (leader, follower)]
    assert catalogues[0] == catalogues[1]
    assert sorted(model.id for model in catalogues[1]) == sorted(e.id for e in entries)
