"""`fleet up`: the whole stack on this machine, on real parts, used the way a user would.

Up starts the local stack (fleet/stack.py: SeaweedFS, N tritonservers, M control planes), then does what a
user would through the REST API: registers the servers, generates and registers 1,000 unique models, waits
until every one is servable, runs a short locust load test and prints a summary. Everything it starts is
recorded in .fleet/stack.json so `fleet down` stops all of it.

Real sizes: of the 1,000 models, the last few are a real-size phase (by default one BERT-mini of 42 MiB,
one ResNet-50 of 98 MiB and one BERT-small of 109 MiB, from model_repository/profiles.py), so that a
newcomer sees upload, validation, S3, sync and a pack load move hundreds of megabytes, and the summary
prints the bytes served and each real-size model's first (cold) and second (warm) answer. The rest use
`--profile` (tiny by default: the whole `mixed` profile is ~7 GiB per 1,000 models, more than a 2-core
CI machine moves in the three minutes the demo may take; `fleet up --profile mixed` does it where there
is time).

This is the command layer (it uses the control plane's capacity rules and the load-test payloads), above
every package; the stack it starts is built by fleet/stack.py like the tests' and benchmarks' stacks.
"""
from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor

import click
import requests
from tqdm import tqdm

from fleet import demo_models
from fleet.client import register, signature_of
from fleet.stack import STACK_FILE, STATE_DIR, Stack, StackSpec, down


class Api:
    """A thin REST client for the control plane, the way a user script would call it."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        response = self.http.request(method, f"{self.url}{path}", timeout=120, **kwargs)
        if response.status_code >= 400:
            raise click.ClickException(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        return response


def server_names(count: int) -> list[str]:
    """triton-a, triton-b, ... (then triton-27, ...): the local stack's server names."""
    return [f"triton-{chr(ord('a') + k)}" if k < 26 else f"triton-{k + 1}" for k in range(count)]


def up(models: int = 1000, loadtest_seconds: int = 20, users: int = 16, seed: int = 0, profile: str = "tiny",
       real_size: tuple[str, ...] = demo_models.REAL_SIZE_PHASE, control_planes: int = 1,
       servers: int = 2) -> dict:
    from control_plane.capacity import local_capacity_bytes

    started = time.monotonic()
    if STACK_FILE.exists():
        click.echo("a previous stack is recorded; stopping it first")
        down()
    STATE_DIR.mkdir(exist_ok=True)
    for stale in ("registry.db", "registry.db-wal", "registry.db-shm"):
        (STATE_DIR / stale).unlink(missing_ok=True)
    step = itertools.count(1)
    stack = Stack(StackSpec(STATE_DIR, servers=tuple(server_names(servers)), control_planes=control_planes,
                            record=True))
    stack.start(progress=lambda text: click.echo(f"{next(step)}/7 {text}"))
    urls = [plane.url for plane in stack.control_planes]
    url, token = urls[0], stack.spec.token
    log = stack.control_plane.log
    stack.note(control_plane=url, control_planes=urls, token=token, s3=stack.s3.endpoint_url)
    api = Api(url, token)
    # Each server's budget is its share of the memory this machine has available now, not a fixed figure.
    capacity = local_capacity_bytes(len(stack.servers))
    click.echo(f"   each server's memory budget: {capacity / 2**30:.1f} GiB (its share of what is available)")
    stack.register_servers(capacity_bytes=capacity, metrics=True)

    phase = f", the last {len(real_size)} real-size ({', '.join(real_size)})" if real_size else ""
    click.echo(f"{next(step)}/7 generating {models} unique models ({profile}{phase})")
    generated = demo_models.generate(STATE_DIR / "generated", models, profile, real_size, seed)

    click.echo(f"{next(step)}/7 registering them through the REST API (upload + validation + S3 + pack)")

    def register_one(item) -> int:
        folder, entry = item
        replica = urls[int(entry.sha256[:8], 16) % len(urls)]  # registrations spread over the replicas
        response = register(replica, entry.id, folder / entry.file, signature_of(entry), token=token)
        if response.status_code >= 400:
            raise click.ClickException(f"POST /api/v1/models ({entry.id}) -> {response.status_code}: "
                                       f"{response.text[:500]}")
        return response.status_code

    with ThreadPoolExecutor(4) as pool, tqdm(total=models, unit="model", desc="register") as bar:
        for _ in pool.map(register_one, generated):
            bar.update(1)

    click.echo(f"{next(step)}/7 waiting until every model is servable")
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

    click.echo(f"{next(step)}/7 load test: {users} locust users for {loadtest_seconds} s, Zipf mix over all models")
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
               "control_planes": [{"url": plane.url, "leader": plane.leads()} for plane in stack.control_planes],
               "servers": {name: server.grpc_url for name, server in stack.servers.items()},
               "s3": stack.s3.endpoint_url}
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
