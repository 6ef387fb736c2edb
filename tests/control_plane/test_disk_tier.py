"""The disk tier of servers that sync themselves (EKS pods, ECS tasks): their sync publishes its status to
S3, the reconciler reads it into servers.tier_usage next to the Triton scrape's tiers, and the API and
/metrics show it. Real S3 (SeaweedFS) and a real sync; the control plane runs in the app test client.
"""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from control_plane.app import create_app
from control_plane.assignments import (
    assigned_servers,
    disk_tier,
    publish_assignment,
    read_server_assignment,
    read_sync_status,
)
from control_plane.db import Server
from control_plane.settings import Settings
from control_plane.traffic import parse
from model_repository.s3_sync import sync, upload

TOKEN = "disk-tier-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
POD, SILENT = "eks-triton-cpu-0", "eks-triton-cpu-1"
TRITON_PAGE = """\
# TYPE fleet_tier_resident_bytes gauge
fleet_tier_resident_bytes{pack="pack-a",tier="host"} 3000
# TYPE fleet_tier_resident_members gauge
fleet_tier_resident_members{pack="pack-a",tier="host"} 3
# TYPE fleet_tier_budget_bytes gauge
fleet_tier_budget_bytes{pack="pack-a",tier="host"} 8000
"""


@pytest.fixture
def control_plane(request, seaweed, s3_uri, tmp_path, monkeypatch):
    """A control plane (no reconciler thread) on the session's S3 with two servers that sync themselves;
    the disk status is read at most once an hour (or at the interval a test gives as its parameter)."""
    for key, value in seaweed.environment().items():
        monkeypatch.setenv(key, value)
    settings = Settings(api_token=TOKEN, database_url=f"sqlite:///{tmp_path / 'registry.db'}",
                        repository_uri=s3_uri, s3_endpoint_url=seaweed.endpoint_url, work_dir=tmp_path / "cp",
                        disk_status_interval_s=getattr(request, "param", 3600))
    app = create_app(settings, start_reconciler=False)
    with app.extensions["fleet"].sessions.begin() as session:  # as discovery registers pods it found
        for name in (POD, SILENT):
            session.add(Server(name=name, family="cpu", http_url="http://127.0.0.1:9", grpc_url="127.0.0.1:9",
                               capacity_bytes=2**30))
    yield app, app.test_client(), settings
    app.extensions["fleet"].reconciler.stop()


def pod_syncs(seaweed, settings: Settings, tmp_path) -> dict:
    """What `fleet sync --server eks-triton-cpu-0` does in the pod: sync its share, publish its status."""
    source = tmp_path / "source"
    for pack, size in (("pack-a", 3000), ("pack-b", 5000)):
        (source / pack / "1").mkdir(parents=True)
        (source / pack / "config.pbtxt").write_text(f'name: "{pack}"\n')
        (source / pack / "1" / "weights.bin").write_bytes(b"w" * size)
    client = seaweed.client()
    upload(source, settings.repository_uri, client)
    publish_assignment(client, settings, POD, {"pack-a": 1, "pack-b": 1})
    report = sync(settings.repository_uri, tmp_path / "pod", client, server=POD, disk_budget_bytes=10**6,
                  publish_status=True)
    assert report.status_published
    return read_sync_status(client, settings, POD)


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_a_servers_published_sync_status_becomes_its_disk_tier_in_the_api_and_metrics(control_plane, seaweed,
                                                                                       tmp_path):
    app, client, settings = control_plane
    status = pod_syncs(seaweed, settings, tmp_path)
    app.extensions["fleet"].reconciler.disk_tier.update()

    usage = client.get(f"/api/v1/servers/{POD}", headers=HEADERS).get_json()["tier_usage"]
    disk = usage["tiers"]["disk"]
    assert disk == disk_tier(status)
    assert disk["resident_members"] == 2 and disk["resident_bytes"] == status["resident_bytes"] > 8000
    assert (disk["budget_bytes"], disk["misses"], disk["loads"], disk["hits"]) == (10**6, 2, 2, 0)
    assert usage["disk_synced_at"] and usage["scraped_at"] is None, "no Triton scrape yet"
    assert client.get(f"/api/v1/servers/{SILENT}", headers=HEADERS).get_json()["tier_usage"] is None, \
        "a server that published no status yet has no tier usage, and that is no error"

    text = client.get("/metrics", headers=HEADERS).get_data(as_text=True)
    assert metric(text, "fleet_server_tier_resident_bytes", server=POD, tier="disk") == disk["resident_bytes"]
    assert metric(text, "fleet_server_tier_resident_members", server=POD, tier="disk") == 2
    assert metric(text, "fleet_server_tier_budget_bytes", server=POD, tier="disk") == 10**6
    assert metric(text, "fleet_server_tier_misses", server=POD, tier="disk") == 2
    assert metric(text, "fleet_server_tier_resident_bytes", server=SILENT, tier="disk") is None


@pytest.mark.parametrize("control_plane", [1e-6], indirect=True)  # every disk_tier.update() reads S3
def test_the_triton_scrape_and_the_disk_status_each_keep_the_others_tiers(control_plane, seaweed, tmp_path):
    app, client, settings = control_plane
    reconciler = app.extensions["fleet"].reconciler
    pod_syncs(seaweed, settings, tmp_path)
    reconciler.disk_tier.update()
    reconciler.traffic.observe(POD, parse(TRITON_PAGE))  # what a scrape of the pod's Triton metrics hands over
    reconciler.readings.update()
    usage = client.get(f"/api/v1/servers/{POD}", headers=HEADERS).get_json()["tier_usage"]
    assert set(usage["tiers"]) == {"disk", "host"} and usage["scraped_at"] and usage["disk_synced_at"]
    assert usage["tiers"]["host"]["resident_bytes"] == 3000

    sync(settings.repository_uri, tmp_path / "pod", seaweed.client(), server=POD, disk_budget_bytes=10**6,
         publish_status=True)  # the next pass: both packs already on disk
    reconciler.disk_tier.update()
    usage = client.get(f"/api/v1/servers/{POD}", headers=HEADERS).get_json()["tier_usage"]
    assert usage["tiers"]["host"]["resident_bytes"] == 3000 and usage["tiers"]["disk"]["hits"] == 2
    text = client.get("/metrics", headers=HEADERS).get_data(as_text=True)
    assert metric(text, "fleet_server_tier_budget_bytes", server=POD, tier="host") == 8000
    assert metric(text, "fleet_server_tier_hits", server=POD, tier="disk") == 2


def test_the_status_is_read_at_its_own_cadence_one_get_per_server(control_plane, seaweed, tmp_path):
    app, _, settings = control_plane
    reconciler = app.extensions["fleet"].reconciler
    pod_syncs(seaweed, settings, tmp_path)
    reads: list[str] = []
    s3 = app.extensions["fleet"].s3
    s3.meta.events.register("provide-client-params.s3.GetObject",
                            lambda params, **_: reads.append(params["Key"]) if "/.fleet/status/" in params["Key"]
                            else None)
    reconciler.disk_tier.update()
    assert sorted(key.rsplit("/", 1)[1] for key in reads) == [f"{POD}.json", f"{SILENT}.json"]
    reconciler.disk_tier.update()
    reconciler.tick()
    assert len(reads) == 2, "within disk_status_interval_s the status is not read again"


def test_a_server_that_left_loses_its_assignment_and_status_in_s3_and_one_that_returns_gets_its_share_again(
        control_plane, seaweed, tmp_path):
    app, client, settings = control_plane
    reconciler = app.extensions["fleet"].reconciler
    pod_syncs(seaweed, settings, tmp_path)  # POD has a published status
    reconciler.assignments.update()  # and both servers their (here empty) share
    s3 = seaweed.client()
    assert assigned_servers(s3, settings) == {POD, SILENT}

    assert client.delete(f"/api/v1/servers/{POD}", headers=HEADERS).status_code == 200  # the pod scaled in
    reconciler.departures.update()
    assert assigned_servers(s3, settings) == {SILENT}, "a registered server keeps its assignment"
    assert read_sync_status(s3, settings, POD) is None and read_server_assignment(s3, settings, POD) is None

    with app.extensions["fleet"].sessions.begin() as session:  # the pod is back under the same name
        session.add(Server(name=POD, family="cpu", http_url="http://127.0.0.1:9", grpc_url="127.0.0.1:9",
                           capacity_bytes=2**30))
    reconciler.assignments.update()
    assert read_server_assignment(s3, settings, POD)["packs"] == {}, "its share is published again"
