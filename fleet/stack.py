"""`fleet up` / `fleet down`: the whole stack on this machine, on real parts.

Up starts SeaweedFS (S3), two tritonservers and the control plane (waitress), then does what a user
would through the REST API: registers the servers, generates and registers 1,000 unique models, waits
until every one is servable, runs a short locust load test and prints a summary. Everything it starts is
recorded in .fleet/stack.json so `fleet down` stops all of it.
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
    STACK_FILE.unlink()
    return stopped


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


def up(models: int = 1000, loadtest_seconds: int = 20, users: int = 16, seed: int = 0) -> dict:
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

    click.echo("2/7 starting two tritonservers (explicit model control, repository API behind a key)")
    servers = []
    for name in ("triton-a", "triton-b"):
        repo = (STATE_DIR / "servers" / name / "repository").resolve()
        repo.mkdir(parents=True, exist_ok=True)
        server = TritonServer(repo, admin_key=admin_key, log_path=repo.parent / "tritonserver.log").start()
        stack["pids"][name] = server.process.pid
        _record(stack)
        servers.append((name, server, repo))

    click.echo("3/7 starting the control plane under waitress")
    port = free_port()
    env = {**os.environ, **s3.environment(), "FLEET_API_TOKEN": token, "FLEET_TRITON_ADMIN_KEY": admin_key,
           "FLEET_DATABASE_URL": f"sqlite:///{(STATE_DIR / 'registry.db').resolve()}",
           "FLEET_REPOSITORY_URI": f"s3://{BUCKET}/repository", "FLEET_S3_ENDPOINT_URL": s3.endpoint_url,
           "FLEET_WORK_DIR": str((STATE_DIR / "control-plane").resolve()),
           # keeps the repository root off sys.path (see Makefile)
           "PYTHONSAFEPATH": "1"}
    log = STATE_DIR / "control-plane.log"
    with open(log, "ab") as log_file:
        cp = subprocess.Popen([sys.executable, "-m", "fleet.cli", "control-plane", "serve", "--port", str(port)],
                              env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    stack["pids"]["control-plane"] = cp.pid
    url = f"http://127.0.0.1:{port}"
    stack.update(control_plane=url, token=token, s3=s3.endpoint_url)
    _record(stack)
    _wait_http(f"{url}/readyz", 120, cp, log)
    api = Api(url, token)
    for name, server, repo in servers:
        api.call("POST", "/api/v1/servers", json={
            "name": name, "family": "cpu", "http_url": server.http_url, "grpc_url": server.grpc_url,
            "capacity_bytes": 8 * 2**30, "repository_path": str(repo)})

    click.echo(f"4/7 generating {models} unique models")
    from model_repository.generator import generate

    generated = STATE_DIR / "generated"
    with tqdm(total=models, unit="model", desc="generate") as bar:
        manifest = generate(models, generated, seed=seed, on_progress=bar.update)

    click.echo("5/7 registering them through the REST API (upload + validation + S3 + pack)")

    def register(entry) -> int:
        signature = {"inputs": [i.model_dump(mode="json") for i in entry.inputs],
                     "outputs": [o.model_dump(mode="json") for o in entry.outputs]}
        with open(generated / entry.file, "rb") as artifact:
            return api.call("POST", "/api/v1/models", data={"name": entry.id, "signature": json.dumps(signature)},
                            files={"artifact": (f"{entry.id}.pt", artifact)}).status_code

    with ThreadPoolExecutor(4) as pool, tqdm(total=models, unit="model", desc="register") as bar:
        for _ in pool.map(register, manifest.models):
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

    click.echo(f"7/7 load test: {users} locust users for {loadtest_seconds} s, Zipf mix over all models")
    test = api.call("POST", "/api/v1/loadtests", json={"users": users, "spawn_rate": users,
                                                       "duration_s": loadtest_seconds}).json()
    with tqdm(total=loadtest_seconds + 15, unit="s", desc="loadtest") as bar:
        while test["status"] in ("pending", "running"):
            time.sleep(1)
            bar.update(1 if bar.n < bar.total else 0)
            test = api.call("GET", f"/api/v1/loadtests/{test['id']}").json()
    summary = {"wall_time_s": round(time.monotonic() - started, 1), "time_to_servable_s": round(servable_at, 1),
               "models_servable": servable, "loadtest": test, "control_plane": url, "token": token,
               "servers": {name: server.grpc_url for name, server, _ in servers}, "s3": s3.endpoint_url}
    (STATE_DIR / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def print_summary(summary: dict) -> None:
    test = summary["loadtest"]
    click.echo("\n=== triton-fleet local stack is up ===")
    click.echo(f"wall time            {summary['wall_time_s']} s (all models servable after "
               f"{summary['time_to_servable_s']} s)")
    click.echo(f"models servable      {summary['models_servable']}")
    if test["status"] == "succeeded" and test["results"]["aggregated"]:
        agg = test["results"]["aggregated"]
        click.echo(f"load test            {agg['requests']} requests to {test['results']['models_hit']} models, "
                   f"{agg['failures']} failures, {agg['rps']:.0f} rps, p50 {agg['p50_ms']:.0f} ms, "
                   f"p99 {agg['p99_ms']:.0f} ms")
    else:
        click.echo(f"load test            {test['status']}: {test.get('error')}")
    click.echo(f"control plane        {summary['control_plane']}  (docs {summary['control_plane']}/docs)")
    click.echo(f"status page          {summary['control_plane']}/  (logs: fleet logs)")
    click.echo(f"API token            {summary['token']}")
    for name, grpc in summary["servers"].items():
        click.echo(f"triton {name:13} grpc {grpc}")
    click.echo(f"S3 (SeaweedFS)       {summary['s3']}")
    click.echo("stop everything with: fleet down   (or: make down)")
