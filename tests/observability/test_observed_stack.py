"""A real stack seen from outside: /metrics, the dashboards' metric names, the status page in a real
headless chromium, and JSON logs with request ids merged by `fleet logs`."""
from __future__ import annotations

import json
import re
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import requests
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from control_plane.observability.cli import logs_command
from control_plane.observability.dashboards import used_metric_names
from fleet.settings import DevelopmentSettings
from fleet.waiting import wait_for
from model_repository.generator import example_inputs, generate
from model_repository.manifest import Manifest

from .conftest import TOKEN, infer

pytestmark = pytest.mark.slow
MODELS = 3
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "status-page.png"


def sample_names(text: str) -> set[str]:
    """Every sample name in a Prometheus text exposition, read as written (no parser renaming)."""
    return {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def samples(text: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def value(found: dict[str, list], name: str, **labels: str) -> float:
    return sum(s.value for s in found.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def observed_models(models_dir) -> Manifest:
    """The models this module registers."""
    return generate(MODELS, models_dir, seed=16)


@pytest.fixture(scope="module")
def fleet(stack_factory, observed_models, models_dir):
    """One server, three registered models answering requests (and one refused), one short load test."""
    stack = stack_factory(("triton-a",))
    manifest = observed_models
    for entry in manifest.models:
        assert stack.register(models_dir, entry).status_code == 201
    for entry in manifest.models:
        wait_for(lambda e=entry: stack.model(e.id)["status"] == "servable", 180, what=f"{entry.id} servable")
    for entry in manifest.models:
        for seed in range(3):
            response = infer(stack, entry.id, example_inputs(entry, 2, seed), entry)
            assert response.status_code == 200, response.text
    first = manifest.models[0]
    wrong = [np.zeros((1, 999), dtype=np.float32) if a.dtype == np.float32 else a for a in example_inputs(first, 1)]
    assert infer(stack, first.id, wrong, first).status_code != 200  # refused: counts as a failure
    test = stack.api().post(f"{stack.url}/api/v1/loadtests", json={"users": 4, "spawn_rate": 4,
                                                                   "duration_s": 6, "mix": "uniform"}).json()

    def finished():
        body = stack.api().get(f"{stack.url}/api/v1/loadtests/{test['id']}").json()
        return body if body["status"] in ("succeeded", "failed") else None

    done = wait_for(finished, 120, 1.0, "load test finished")
    assert done["status"] == "succeeded" and done["results"]["models_hit"] > 0, done
    return stack


def triton_metrics(stack) -> str:
    server = next(iter(stack.servers.values()))

    def flushed():  # the pack runtime flushes its counters about once a second
        text = server.metrics()
        return text if "fleet_member_requests_total{" in text else None

    return wait_for(flushed, 30, what="pack runtime metrics flushed")


def test_every_metric_name_a_dashboard_or_alarm_uses_is_exported_by_the_real_servers(fleet):
    exported = sample_names(triton_metrics(fleet)) | sample_names(fleet.api().get(f"{fleet.url}/metrics").text)
    missing = sorted(used_metric_names() - exported)
    assert not missing, f"dashboards/alarms name metrics nobody exports: {missing}"


def test_control_plane_metrics_describe_the_fleet(fleet, observed_models):
    found = samples(fleet.api().get(f"{fleet.url}/metrics").text)
    assert value(found, "fleet_models", status="servable") == MODELS
    assert value(found, "fleet_models", status="pending") == 0
    assert value(found, "fleet_servers", health="healthy") == 1
    assert value(found, "fleet_servers", health="unhealthy") == 0
    packs = {fleet.model(m.id)["pack"] for m in observed_models.models}
    assert value(found, "fleet_placements", state="loaded") == len(packs)
    assert {s.labels["pack"]: s.value for s in found["fleet_pack_replicas"]} == dict.fromkeys(packs, 1)
    assert value(found, "fleet_registrations_total", outcome="created") >= MODELS
    assert value(found, "fleet_loadtests", status="succeeded") == 1
    assert value(found, "fleet_pack_loads_total", action="load", outcome="ok") >= 1
    assert value(found, "fleet_syncs_total", outcome="ok") >= 1
    assert value(found, "fleet_reconcile_tick_seconds_count") > 0
    assert value(found, "fleet_control_plane_leader") == 1
    assert value(found, "fleet_registry_up") == 1 and value(found, "fleet_object_store_up") == 1
    placed = value(found, "fleet_server_placed_bytes", server="triton-a")
    assert 0 < placed <= value(found, "fleet_server_capacity_bytes", server="triton-a")


def test_metrics_need_the_read_token_on_the_api_port_and_none_on_the_internal_port(fleet):
    refused = requests.get(f"{fleet.url}/metrics", timeout=10)
    assert refused.status_code == 401 and "FLEET_METRICS_PORT" in refused.json()["error"]["message"]
    assert fleet.api(token="wrong").get(f"{fleet.url}/metrics").status_code == 401
    internal = requests.get(fleet.control_plane.metrics_url, timeout=10)
    assert internal.status_code == 200
    assert value(samples(internal.text), "fleet_models", status="servable") == MODELS


def test_the_status_page_renders_servers_models_and_load_tests_in_headless_chromium(fleet, observed_models, tmp_path):
    from .conftest import headless

    dom = headless(f"{fleet.url}/", tmp_path, "--dump-dom", "--virtual-time-budget=3000")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "triton-fleet" in html and "triton-a" in html and "healthy" in html
    assert f"{MODELS} servable" in html
    for model in observed_models.models:
        assert re.search(f'id="packs".*?<td>{fleet.model(model.id)["pack"]}</td>', html, re.S), "packs listed"
    assert 'id="hottest"' in html and any(m.id in html for m in observed_models.models), \
        "hottest models from the load test"
    assert 'id="loadtests"' in html and "<svg" in html, "the load test with its latency plot"
    assert "Database, object store, reconciler and every server are healthy" in html
    assert TOKEN not in html and "observe-test-admin-key" not in html, "no secrets on the page"
    shot = tmp_path / "status.png"
    done = headless(f"{fleet.url}/", tmp_path, f"--screenshot={shot}", "--window-size=1300,760",
                    "--virtual-time-budget=3000")
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]
    if DevelopmentSettings.from_env().update_screenshot:
        shutil.copyfile(shot, SCREENSHOT)


def test_logs_are_json_with_request_ids_and_the_model_pack_and_server_they_are_about(fleet, observed_models):
    name = observed_models.models[0].id
    response = fleet.api().get(f"{fleet.url}/api/v1/models/{name}", headers={"X-Request-Id": "obs-req-42"})
    assert response.headers["X-Request-Id"] == "obs-req-42"
    generated = fleet.api().get(f"{fleet.url}/api/v1/servers").headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)

    def entries():
        lines = [json.loads(line) for line in fleet.control_plane.log.read_text().splitlines() if line.startswith("{")]
        return lines if any(e.get("request_id") == "obs-req-42" for e in lines) else None

    lines = wait_for(entries, 10, what="the request's log line")
    request_line = next(e for e in lines if e.get("request_id") == "obs-req-42")
    assert request_line["model"] == name and request_line["status"] == 200 and request_line["path"].endswith(name)
    loads = [e for e in lines if e.get("action") == "pack.load"]
    assert loads and loads[0]["pack"] == fleet.model(name)["pack"] and loads[0]["server"] == "triton-a"
    registered = [e for e in lines if e.get("action") == "model.register"]
    assert {e["model"] for e in registered} == {m.id for m in observed_models.models}


def test_fleet_logs_merges_the_stacks_logs_in_time_order(fleet):
    fleet.api().get(f"{fleet.url}/api/v1/servers", headers={"X-Request-Id": "obs-merge-7"})
    wait_for(lambda: "obs-merge-7" in fleet.control_plane.log.read_text(), 10, what="the request's log line")
    result = CliRunner().invoke(logs_command, ["--dir", str(fleet.root)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    sources = {line.split()[1] for line in result.output.splitlines() if line[:2].isdigit()}
    assert {"control-plane", "triton-a", "seaweedfs"} <= sources
    stamps = [line.split()[0] for line in result.output.splitlines() if re.match(r"\d\d:\d\d:\d\d\.\d{3} ", line)]
    times = [datetime.strptime(s, "%H:%M:%S.%f") for s in stamps]
    assert times == sorted(times), "merged in time order"
    only = CliRunner().invoke(logs_command, ["--dir", str(fleet.root), "--grep", "obs-merge-7", "--source",
                                             "control-plane"])
    assert only.output and all("obs-merge-7" in line for line in only.output.splitlines())


def test_the_disk_tier_of_a_local_server_comes_from_the_control_planes_own_sync(fleet, observed_models):
    """fleet up's servers are synced by the control plane: their disk tier is that sync's report, shown by
    the API and exported per server and tier on /metrics, the same figures as the sync's status file."""
    from control_plane.assignments import disk_tier
    from model_repository.s3_sync import status_paths

    server = fleet.servers["triton-a"]
    on_disk = json.loads(status_paths(server.repository)[0].read_text())

    def shown():
        usage = fleet.api().get(f"{fleet.url}/api/v1/servers/triton-a").json()["tier_usage"] or {}
        return usage if (usage.get("tiers") or {}).get("disk") == disk_tier(on_disk) else None

    usage = wait_for(shown, 30, what="the disk tier from the control plane's sync")
    packs = {fleet.model(m.id)["pack"] for m in observed_models.models}
    assert usage["tiers"]["disk"]["resident_members"] == len(packs) and usage["disk_synced_at"]
    found = samples(fleet.api().get(f"{fleet.url}/metrics").text)
    assert value(found, "fleet_server_tier_resident_bytes", server="triton-a", tier="disk") == \
        on_disk["resident_bytes"] > 0
    assert value(found, "fleet_server_tier_resident_members", server="triton-a", tier="disk") == len(packs)
    assert value(found, "fleet_server_tier_budget_bytes", server="triton-a", tier="disk") == on_disk["budget_bytes"]
