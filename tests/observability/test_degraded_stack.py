"""The status page and /metrics stay up and say what is wrong when a server or S3 goes down under a
running control plane (each test stops parts of its own stack)."""
from __future__ import annotations

import pytest
import requests

from fleet.waiting import wait_for

pytestmark = pytest.mark.slow


def scrape(stack) -> str:
    response = requests.get(stack.control_plane.metrics_url, timeout=30)
    assert response.status_code == 200
    return response.text


def test_a_dead_server_shows_as_unhealthy_on_the_page_and_in_metrics(stack_factory):
    stack = stack_factory(("triton-a",))
    stack.servers["triton-a"].stop()
    wait_for(lambda: 'fleet_servers{health="unhealthy"} 1.0' in scrape(stack), 60, 0.5, "server marked unhealthy")
    page = requests.get(f"{stack.url}/", timeout=30)
    assert page.status_code == 200
    assert "unhealthy" in page.text and "triton-a (unreachable" in page.text
    assert 'id="problems"' in page.text and "<strong>servers</strong>" in page.text


def test_s3_down_is_reported_while_the_page_and_metrics_stay_up(stack_factory):
    stack = stack_factory(("triton-a",))
    assert "fleet_object_store_up 1.0" in scrape(stack)
    stack.s3.stop()
    page = requests.get(f"{stack.url}/", timeout=30)
    assert page.status_code == 200
    assert "<strong>object_store</strong>" in page.text and "s3://fleet-models" in page.text
    assert "triton-a" in page.text, "the rest of the page still renders"
    text = scrape(stack)
    assert "fleet_object_store_up 0.0" in text and "fleet_registry_up 1.0" in text
