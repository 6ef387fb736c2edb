"""fleet.client against a real control plane and two real tritonservers that both serve one pack (the
control plane's own placement keeps two replicas), so `GET /api/v1/models/{name}` lists both endpoints."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from tritonclient.utils import InferenceServerException

from fleet import waiting
from fleet.client import AsyncFleetClient, FleetClient, ModelNotFound
from fleet.triton_server import TritonServer
from loadtest.results import parse_stats_csv
from model_repository.generator import example_inputs
from model_repository.manifest import Manifest
from model_repository.s3_sync import UsageTracker

from .conftest import TOKEN, stack_on

pytestmark = pytest.mark.slow
LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtest" / "triton_models.py"


def wait_for(predicate, what: str, timeout_s: float = 120.0):
    return waiting.wait_for(predicate, timeout_s, what=what)


def requests_served(server: TritonServer, pack: str) -> float:
    return server.admin.scrape().model_successes.get(pack, 0.0)


@pytest.fixture
def replicated(tmp_path_factory, seaweed, generated_models):
    """A model registered through the control plane, whose placement keeps its pack on both servers
    (FLEET_REPLICAS_MIN defaults to 2); yields once both replicas serve it."""
    root = tmp_path_factory.mktemp("client")
    with stack_on(root, seaweed, "client", servers=("replica-a", "replica-b"), server_dead_after_s=2).start() as stack:
        stack.register_servers(capacity_bytes=8 * 2**30, metrics=True)
        architecture = Manifest.read(generated_models).models[0].architecture
        (entry,) = stack.register_models(generated_models, 1, architecture=architecture)
        model = wait_for(lambda: len((b := stack.model(entry.id))["endpoints"]) == 2 and b,
                         "both replicas serve the model")
        yield {"cp": stack.control_plane, "servers": stack.servers, "entry": entry, "pack": model["pack"],
               "first": model["endpoints"][0]["server"]}


def test_a_model_is_called_by_name_spread_over_replicas_and_survives_a_replica_kill(replicated, generated_models,
                                                                                    tmp_path):
    entry, servers = replicated["entry"], replicated["servers"]
    (x,) = example_inputs(entry, batch=2)
    expected = torch.jit.load(str(generated_models / entry.file))(torch.from_numpy(x)).detach().numpy()
    before = {name: requests_served(s, replicated["pack"]) for name, s in servers.items()}
    # The disk tier's LRU learns from Triton's metrics which packs get requests.
    usage = {name: UsageTracker(server.metrics_url) for name, server in servers.items()}
    for tracker in usage.values():
        tracker.poll()
    with FleetClient(replicated["cp"].url, TOKEN) as client:
        for _ in range(20):
            outputs = client.infer(entry.id, {entry.inputs[0].name: x})
            np.testing.assert_allclose(outputs[entry.outputs[0].name], expected, rtol=1e-5, atol=1e-5)
        with pytest.raises(ModelNotFound, match="not registered"):
            client.infer("no-such-model", [x])
        # A wrong shape is the caller's error: raised at once, never retried into ModelUnavailable.
        with pytest.raises(InferenceServerException, match="must have shape"):
            client.infer(entry.id, [x[:, :1]])
    for name, server in servers.items():
        assert requests_served(server, replicated["pack"]) - before[name] >= 5, f"{name} got its share"
        # the pack runtime's member counters reach /metrics at its next flush (a request >= 1 s later)
        wait_for(lambda n=name: replicated["pack"] in usage[n].poll(), f"{name}'s sync counting the pack as used",
                 30)

    # The asyncio client answers the same.
    async def run():
        client = AsyncFleetClient(replicated["cp"].url, TOKEN)
        try:
            return await asyncio.gather(*(client.infer(entry.id, [x]) for _ in range(8)))
        finally:
            await client.close()

    for outputs in asyncio.run(run()):
        np.testing.assert_allclose(outputs[entry.outputs[0].name], expected, rtol=1e-5, atol=1e-5)

    # The locust user calls models by name through the same client (--fleet-client).
    prefix = tmp_path / "locust"
    command = [str(Path(sys.executable).with_name("locust")), "-f", str(LOCUSTFILE), "--headless", "-u", "2",
               "-r", "2", "-t", "5s", "--csv", str(prefix), "--only-summary", "--models-from",
               replicated["cp"].url, "--token", TOKEN, "--fleet-client", "--mix", "uniform"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    stats = parse_stats_csv(Path(f"{prefix}_stats.csv").read_text()).aggregated
    assert done.returncode == 0 and stats.requests > 20 and stats.failures == 0, (done.stdout + done.stderr)[-2000:]

    # Killing the server that holds one of the two replicas, under load, fails no request.
    victim = servers[replicated["first"]]
    (x,) = example_inputs(entry, batch=1)
    counts = {"ok": 0, "failed": 0, "ok_after_kill": 0}
    errors: list[str] = []
    killed, stop = threading.Event(), threading.Event()
    lock = threading.Lock()

    def user() -> None:
        with FleetClient(replicated["cp"].url, TOKEN, request_timeout_s=5) as client:
            while not stop.is_set():
                try:
                    client.infer(entry.id, [x])
                    with lock:
                        counts["ok"] += 1
                        counts["ok_after_kill"] += killed.is_set()
                except Exception as error:  # noqa: BLE001  every failure is counted and shown
                    with lock:
                        counts["failed"] += 1
                        errors.append(repr(error)[:300])

    users = [threading.Thread(target=user) for _ in range(4)]
    for thread in users:
        thread.start()
    try:
        wait_for(lambda: counts["ok"] >= 200, "load is running", 60)
        os.killpg(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        killed.set()
        wait_for(lambda: counts["ok_after_kill"] >= 400, "requests keep succeeding after the kill", 90)
        # The control plane notices the death and stops listing the dead replica.
        wait_for(lambda: [e["server"] for e in requests.get(
            f"{replicated['cp'].url}/api/v1/models/{entry.id}", headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5).json()["endpoints"]] == [n for n in servers if servers[n] is not victim], "dead replica dropped")
        wait_for(lambda: counts["ok_after_kill"] >= 500, "requests succeed after re-resolution", 60)
    finally:
        stop.set()
        for thread in users:
            thread.join(timeout=30)
    assert counts["failed"] == 0, errors[:5]
