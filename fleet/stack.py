"""`fleet up` / `fleet down`: the whole stack on this machine, on real parts.

Up starts SeaweedFS (S3), N tritonservers (default two) and the control plane (waitress), then does what a user
would through the REST API: registers the servers, generates and registers 1,000 unique models, waits
until every one is servable, runs a short locust load test and prints a summary. Everything it starts is
recorded in .fleet/stack.json so `fleet down` stops all of it.

Real sizes: of the 1,000 models, the last few are a real-size phase (by default one BERT-mini of 42 MiB,
one ResNet-50 of 98 MiB and one BERT-small of 109 MiB, from model_repository/profiles.py), so that a
newcomer sees upload, validation, S3, sync and a pack load move hundreds of megabytes, and the summary
prints the bytes served and each real-size model's first (cold) and second (warm) answer. The rest use
`--profile` (tiny by default: the whole `mixed` profile is ~7 GiB per 1,000 models, more than a 2-core
CI machine moves in the three minutes the demo may take; `fleet up --profile mixed` does it where there
is time).
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import requests
from tqdm import tqdm

from fleet import demo_models
from fleet.seaweedfs import SeaweedS3
from fleet.triton_server import TritonServer, free_port

STATE_DIR = Path(".fleet")
STACK_FILE = STATE_DIR / "stack.json"
BUCKET = "fleet-models"


@dataclass
class Api:
    """A thin REST client for the control plane, the way a user script would call it."""

    url: str
    token: str

    def __post_init__(self) -> None:
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self.http.request(method, f"{self.url}{path}", timeout=120, **kwargs)
        if response.status_code >= 400:
            raise click.ClickException(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        return response


def _stop_group(pid: int, timeout_s: float = 20.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def down() -> list[str]:
    """Stop everything `fleet up` started; returns what was stopped."""
    if not STACK_FILE.exists():
        return []
    stack = json.loads(STACK_FILE.read_text())
    stopped = []
    for name, pid in reversed(list(stack["pids"].items())):
        _stop_group(pid)
        stopped.append(name)
    if stack.get("postgres_data"):  # the embedded PostgreSQL of --control-planes N (not a process group)
        from fleet.postgres import EmbeddedPostgres

        EmbeddedPostgres(Path(stack["postgres_data"]), cleanup_mode=None).stop()
        stopped.append("postgresql")
    STACK_FILE.unlink()
    return stopped


def stop_server(name: str) -> bool:
    """Stop one tritonserver of the recorded stack (after it was drained); False if it was not running."""
    if not STACK_FILE.exists():
        return False
    stack = json.loads(STACK_FILE.read_text())
    pid = stack["pids"].pop(name, None)
    if pid is None:
        return False
    _stop_group(pid)
    _record(stack)
    return True


def _record(stack: dict) -> None:
    STACK_FILE.write_text(json.dumps(stack, indent=1))


def _wait_http(url: str, timeout_s: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"process exited with {process.returncode}; see {log}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise click.ClickException(f"{url} not ready after {timeout_s:.0f} s; see {log}")


def _start_control_planes(count: int, env: dict, stack: dict) -> list[str]:
    """N control-plane replicas (one on SQLite; several on an embedded PostgreSQL), each on its own port
    and work folder; returns their URLs once every one answers /readyz."""
    if count > 1:
        from fleet.postgres import EmbeddedPostgres

        postgres = EmbeddedPostgres(STATE_DIR / "postgres", cleanup_mode=None)  # `fleet down` stops it
        stack["postgres_data"] = str(postgres.pgdata)
        _record(stack)
        env = {**env, "FLEET_DATABASE_URL": postgres.create_database()}
    urls, processes = [], []
    for k in range(count):
        suffix = "" if count == 1 else f"-{k}"
        port = free_port()
        log = STATE_DIR / f"control-plane{suffix}.log"
        with open(log, "ab") as log_file:
            cp = subprocess.Popen([sys.executable, "-m", "fleet.cli", "control-plane", "serve", "--port", str(port)],
                                  env={**env, "FLEET_WORK_DIR": str((STATE_DIR / f"control-plane{suffix}").resolve())},
                                  stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        stack["pids"][f"control-plane{suffix}"] = cp.pid
        _record(stack)
        urls.append(f"http://127.0.0.1:{port}")
        processes.append((cp, log))
    for url, (cp, log) in zip(urls, processes, strict=True):
        _wait_http(f"{url}/readyz", 120, cp, log)
    return urls


def leaders(urls: list[str]) -> list[bool]:
    """Which replicas say they lead the reconciler (GET /readyz)."""
    flags = []
    for url in urls:
        try:
            flags.append(bool(requests.get(f"{url}/readyz", timeout=5).json().get("leader")))
        except (requests.RequestException, ValueError):
            flags.append(False)
    return flags


def server_names(count: int) -> list[str]:
    """triton-a, triton-b, ... (then triton-27, ...): the local stack's server names."""
    return [f"triton-{chr(ord('a') + k)}" if k < 26 else f"triton-{k + 1}" for k in range(count)]


def up(models: int = 1000, loadtest_seconds: int = 20, users: int = 16, seed: int = 0, profile: str = "tiny",
       real_size: tuple[str, ...] = demo_models.REAL_SIZE_PHASE, control_planes: int = 1,
       servers: int = 2) -> dict:
    started = time.monotonic()
    if STACK_FILE.exists():
        click.echo("a previous stack is recorded; stopping it first")
        down()
    STATE_DIR.mkdir(exist_ok=True)
    for stale in ("registry.db", "registry.db-wal", "registry.db-shm"):
        (STATE_DIR / stale).unlink(missing_ok=True)
    token, admin_key = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    stack: dict = {"pids": {}}

    click.echo("1/7 starting SeaweedFS (S3 on loopback)")
    s3 = SeaweedS3(STATE_DIR / "s3").start()
    stack["pids"]["seaweedfs"] = s3.process.pid
    _record(stack)
    s3.create_bucket(BUCKET)

    click.echo(f"2/7 starting {servers} tritonservers (explicit model control, repository API behind a key)")
    started_servers = []
    for name in server_names(servers):
        repo = (STATE_DIR / "servers" / name / "repository").resolve()
        repo.mkdir(parents=True, exist_ok=True)
        server = TritonServer(repo, admin_key=admin_key, log_path=repo.parent / "tritonserver.log").start()
        stack["pids"][name] = server.process.pid
        _record(stack)
        started_servers.append((name, server, repo))

    click.echo(f"3/7 starting {control_planes} control plane(s) under waitress"
               + (" on an embedded PostgreSQL" if control_planes > 1 else ""))
    env = {**os.environ, **s3.environment(), "FLEET_API_TOKEN": token, "FLEET_TRITON_ADMIN_KEY": admin_key,
           "FLEET_DATABASE_URL": f"sqlite:///{(STATE_DIR / 'registry.db').resolve()}",
           "FLEET_REPOSITORY_URI": f"s3://{BUCKET}/repository", "FLEET_S3_ENDPOINT_URL": s3.endpoint_url,
           "FLEET_REPOSITORY_ROOT": str((STATE_DIR / "servers").resolve()),
           # keeps the repository root off sys.path (see Makefile)
           "PYTHONSAFEPATH": "1"}
    urls = _start_control_planes(control_planes, env, stack)
    url = urls[0]
    log = STATE_DIR / ("control-plane.log" if control_planes == 1 else "control-plane-0.log")
    stack.update(control_plane=url, control_planes=urls, token=token, s3=s3.endpoint_url)
    _record(stack)
    api = Api(url, token)
    apis = [api] + [Api(other, token) for other in urls[1:]]  # registrations spread over the replicas
    from control_plane.capacity import local_capacity_bytes

    # Each server's budget is its share of the memory this machine has available now, not a fixed figure.
    capacity = local_capacity_bytes(len(started_servers))
    click.echo(f"   each server's memory budget: {capacity / 2**30:.1f} GiB (its share of what is available)")
    for name, server, repo in started_servers:
        api.call("POST", "/api/v1/servers", json={
            "name": name, "family": "cpu", "http_url": server.http_url, "grpc_url": server.grpc_url,
            "metrics_url": server.metrics_url, "capacity_bytes": capacity, "repository_path": str(repo)})

    phase = f", the last {len(real_size)} real-size ({', '.join(real_size)})" if real_size else ""
    click.echo(f"4/7 generating {models} unique models ({profile}{phase})")
    generated = demo_models.generate(STATE_DIR / "generated", models, profile, real_size, seed)

    click.echo("5/7 registering them through the REST API (upload + validation + S3 + pack)")

    def register(item) -> int:
        folder, entry = item
        signature = {"inputs": [i.model_dump(mode="json") for i in entry.inputs],
                     "outputs": [o.model_dump(mode="json") for o in entry.outputs]}
        with open(folder / entry.file, "rb") as artifact:
            replica = apis[int(entry.sha256[:8], 16) % len(apis)]
            return replica.call("POST", "/api/v1/models", data={"name": entry.id,
                                                                "signature": json.dumps(signature)},
                                files={"artifact": (Path(entry.file).name, artifact)}).status_code

    with ThreadPoolExecutor(4) as pool, tqdm(total=models, unit="model", desc="register") as bar:
        for _ in pool.map(register, generated):
            bar.update(1)

    click.echo("6/7 waiting until every model is servable")
    with tqdm(total=models, unit="model", desc="servable") as bar:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            servable = api.call("GET", "/api/v1/models", params={"status": "servable", "per_page": 1}).json()["total"]
            bar.update(servable - bar.n)
            if servable >= models:
                break
            time.sleep(1)
    if servable < models:
        raise click.ClickException(f"only {servable}/{models} servable after 10 minutes; see "
                                   f"GET {url}/api/v1/placements and {log}")
    servable_at = time.monotonic() - started
    served_bytes, largest_bytes, largest_name = demo_models.served_bytes(api)
    real = [entry.id for _, entry in generated[len(generated) - len(real_size):]] if real_size else []
    first_answers = demo_models.first_answers(api, real)

    click.echo(f"7/7 load test: {users} locust users for {loadtest_seconds} s, Zipf mix over all models")
    test = api.call("POST", "/api/v1/loadtests", json={"users": users, "spawn_rate": users,
                                                       "duration_s": loadtest_seconds}).json()
    with tqdm(total=loadtest_seconds + 15, unit="s", desc="loadtest") as bar:
        while test["status"] in ("pending", "running"):
            time.sleep(1)
            bar.update(1 if bar.n < bar.total else 0)
            test = api.call("GET", f"/api/v1/loadtests/{test['id']}").json()
    summary = {"wall_time_s": round(time.monotonic() - started, 1), "time_to_servable_s": round(servable_at, 1),
               "models_servable": servable, "served_bytes": served_bytes,
               "largest_model": {"name": largest_name, "bytes": largest_bytes}, "real_size": first_answers,
               "loadtest": test, "control_plane": url, "token": token,
               "control_planes": [{"url": u, "leader": lead} for u, lead in zip(urls, leaders(urls), strict=True)],
               "servers": {name: server.grpc_url for name, server, _ in started_servers}, "s3": s3.endpoint_url}
    (STATE_DIR / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def print_summary(summary: dict) -> None:
    test = summary["loadtest"]
    click.echo("\n=== triton-fleet local stack is up ===")
    click.echo(f"wall time            {summary['wall_time_s']} s (all models servable after "
               f"{summary['time_to_servable_s']} s)")
    click.echo(f"models servable      {summary['models_servable']}")
    largest = summary["largest_model"]
    click.echo(f"bytes served         {summary['served_bytes'] / 2**20:,.1f} MiB in all; largest model "
               f"{largest['name']} {largest['bytes'] / 2**20:,.1f} MiB")
    for row in summary["real_size"]:
        family = (f"; architecture {row['architecture'][:12]} ({row['family_members']} members)"
                  if row.get("architecture") else "; served whole")
        click.echo(f"real-size model      {row['name']} ({row['bytes'] / 2**20:,.1f} MiB): first answer "
                   f"{row['first_s']:.2f} s (cold load), then {row['warm_ms']:.0f} ms (warm){family}")
    if test["status"] == "succeeded" and test["results"]["aggregated"]:
        agg = test["results"]["aggregated"]
        click.echo(f"load test            {agg['requests']} requests to {test['results']['models_hit']} models, "
                   f"{agg['failures']} failures, {agg['rps']:.0f} rps, p50 {agg['p50_ms']:.0f} ms, "
                   f"p99 {agg['p99_ms']:.0f} ms")
    else:
        click.echo(f"load test            {test['status']}: {test.get('error')}")
    for plane in summary.get("control_planes") or [{"url": summary["control_plane"], "leader": True}]:
        role = "  leader (runs the reconciler)" if plane["leader"] else "  follower"
        click.echo(f"control plane        {plane['url']}  (docs {plane['url']}/docs){role}")
    click.echo(f"status page          {summary['control_plane']}/  (logs: fleet logs)")
    click.echo(f"API token            {summary['token']}")
    for name, grpc in summary["servers"].items():
        click.echo(f"triton {name:13} grpc {grpc}")
    click.echo(f"S3 (SeaweedFS)       {summary['s3']}")
    click.echo("stop everything with: fleet down   (or: make down)")
