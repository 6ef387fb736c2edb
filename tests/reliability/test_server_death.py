"""A tritonserver killed with SIGKILL under load: how long its models fail, and that nothing else does.

The client follows the documented contract: it asks GET /api/v1/models/{id} where a model is served and
asks again after a failed request. Each test restarts the server it killed; the `stack` fixture also
starts any stopped server before the next test, so no test depends on the order they run in.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from fleet.settings import ClientSettings
from fleet.waiting import wait_for
from loadtest.sweep import SweepPlan
from model_repository.generator import example_inputs
from model_repository.manifest import Manifest

from .conftest import TOKEN, api, infer, register, servable, url

pytestmark = [pytest.mark.slow, pytest.mark.one_registry]


class Client(threading.Thread):
    """Sends one request every ~20 ms to one model, re-resolving its endpoint after each failure."""

    def __init__(self, stack, name: str, x):
        super().__init__(daemon=True)
        self.stack, self.name, self.x = stack, name, x
        self.outcomes: list[tuple[float, bool, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        where = None
        while not self.stop.is_set():
            try:
                if where is None:
                    body = servable(self.stack, self.name)
                    if body is None:
                        raise InferenceServerException("not servable yet")
                    where = (body["endpoints"][0]["grpc_url"], body["pack"], body["endpoints"][0]["server"])
                infer(where[0], where[1], self.name, self.x, timeout_s=5)
                self.outcomes.append((time.monotonic(), True, where[2]))
            except InferenceServerException as error:
                self.outcomes.append((time.monotonic(), False, str(error)[:80]))
                where = None
            time.sleep(0.02)


def test_a_server_killed_under_load_fails_its_models_for_a_bounded_window(stack, generated_models):
    models = Manifest.read(generated_models).models
    entries = [m for m in models if m.architecture == "mlp"][:2] + [m for m in models if m.architecture == "text"][:2]
    names = [f"death-{e.id}" for e in entries]
    for entry, name in zip(entries, names, strict=True):
        assert register(stack, entry, generated_models, name=name).status_code in (200, 201)
    for name in names:
        wait_for(lambda name=name: servable(stack, name))
    clients = [Client(stack, name, example_inputs(entry, batch=1, seed=1)[0])
               for entry, name in zip(entries, names, strict=True)]
    for client in clients:
        client.start()
    wait_for(lambda: all(any(ok for _, ok, _ in c.outcomes) for c in clients), timeout_s=60)
    time.sleep(2)  # load before the kill
    # Where each client really sends (the API's first endpoint when it last resolved), not where the model
    # was first served: a model served by one server at registration may list the other first a moment later.
    placed = {c.name: [where for _, ok, where in c.outcomes if ok][-1] for c in clients}
    victim = placed[names[0]]
    server = stack.servers[victim]
    killed_at = time.monotonic()
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
    try:
        on_victim = [c for c in clients if placed[c.name] == victim]
        wait_for(lambda: all(any(ok and t > killed_at and where != victim for t, ok, where in c.outcomes)
                             for c in on_victim), timeout_s=120, interval_s=0.2)
        time.sleep(2)
    finally:
        for client in clients:
            client.stop.set()
            client.join(timeout=30)
        server.start()  # the same ports: the control plane sees it recover
    report = []
    for client in clients:
        after = [(t, ok) for t, ok, _ in client.outcomes if t > killed_at]
        failed = [t for t, ok in after if not ok]
        recovered = next((t for t, ok in after if ok and (not failed or t > failed[0])), None)
        window = (recovered - killed_at) if failed and recovered else 0.0
        report.append((client.name, placed[client.name], len(after), len(failed), window))
        assert recovered is not None or not failed, f"{client.name} never recovered"
        if placed[client.name] != victim:
            reasons = sorted({info for t, ok, info in client.outcomes if t > killed_at and not ok})
            assert failed == [], f"{client.name} on the surviving server failed {len(failed)} requests: {reasons}"
        else:
            assert window < 60
    assert any(server_name == victim and failures for _, server_name, _, failures, _ in report)
    wait_for(lambda: api(stack).get(url(stack, f"/servers/{victim}")).json()["healthy"], timeout_s=60)
    lines = "; ".join(f"{n} (on {s}): {f}/{a} failed, window {w:.1f} s" for n, s, a, f, w in report)
    print(f"\nserver SIGKILL under load: {lines}")


def _failures_per_second(history: Path) -> list[tuple[int, int, int]]:
    """(unix second, requests, failures) per second of the run, from locust's cumulative Aggregated rows."""
    rows = [row for row in csv.DictReader(history.open()) if row["Name"] == "Aggregated"]
    seconds, last = [], (0, 0)
    for row in rows:
        total = (int(row["Total Request Count"]), int(row["Total Failure Count"]))
        seconds.append((int(row["Timestamp"]), total[0] - last[0], total[1] - last[1]))
        last = total
    return seconds


def test_a_server_killed_under_a_locust_load_fails_only_inside_the_failover_window(stack, generated_models,
                                                                                  tmp_path):
    """The same fault under real locust: the locustfile re-reads the catalogue every second
    (--refresh-catalogue), so once the control plane has re-placed the dead server's packs the load follows."""
    models = Manifest.read(generated_models).models
    entries = [m for m in models if m.architecture == "cnn"][:2] + [m for m in models if m.architecture == "mlp"][2:4]
    names = [f"locust-death-{e.id}" for e in entries]
    for entry, name in zip(entries, names, strict=True):
        assert register(stack, entry, generated_models, name=name).status_code in (200, 201)
    placed = {name: wait_for(lambda name=name: servable(stack, name))["endpoints"][0]["server"] for name in names}
    victim = placed[names[0]]
    weights = tmp_path / "weights.csv"
    weights.write_text("id,weight\n" + "".join(f"{name},1\n" for name in names))
    prefix = tmp_path / "locust"
    plan = SweepPlan("models", "127.0.0.1:1", (4,), 30, instance_type="-", locust_args=(
        "--models-from", stack.url, "--mix", "file", "--weights-file", str(weights),
        "--refresh-catalogue", "1", "--rps-per-user", "25", "--csv-full-history"))
    command = plan.command(4, prefix)
    env = {**os.environ, **ClientSettings(api_token=TOKEN).environment(), "PYTHONSAFEPATH": "1"}
    locust = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = stack.servers[victim]
    try:
        time.sleep(8)
        killed_at = time.time()
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()
        output, _ = locust.communicate(timeout=120)
    finally:
        if locust.poll() is None:
            locust.kill()
        server.start()
    seconds = _failures_per_second(Path(f"{prefix}_stats_history.csv"))
    before = [s for s in seconds if s[0] < int(killed_at)]
    failing = [s for s in seconds if s[2]]
    assert sum(s[1] for s in before) > 100 and sum(s[2] for s in before) == 0, output[-3000:]
    assert failing, "requests to the killed server's models fail at first"
    window = failing[-1][0] + 1 - killed_at
    tail = [s for s in seconds if s[0] > failing[-1][0]]
    assert window < 25, f"failures went on for {window:.0f} s after the kill"
    assert sum(s[1] for s in tail) > 50 and sum(s[2] for s in tail) == 0, "the load recovered"
    failures = sum(s[2] for s in seconds)
    total = sum(s[1] for s in seconds)
    wait_for(lambda: api(stack).get(url(stack, f"/servers/{victim}")).json()["healthy"], timeout_s=60)
    on_victim = sum(server_name == victim for server_name in placed.values())
    print(f"\nserver SIGKILL under locust (4 users x 25 rps over 4 models, {on_victim} of them on {victim}): "
          f"{failures} of {total} requests failed, all within {window:.1f} s of the kill")
