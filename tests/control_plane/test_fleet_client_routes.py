"""fleet.client's route cache against a control plane's model API on loopback (real HTTP, a werkzeug
server answering `GET /api/v1/models/{name}` as the control plane does): a route past refresh_after_s is
still answered from the cache at once and refreshed behind the caller's back, so a new replica is used
within seconds without any request waiting on the control plane."""
from __future__ import annotations

import gc
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from fleet.client import FleetClient, GrpcClient, ModelNotFound
from fleet.waiting import wait_for


class ModelApi:
    """The control plane's model endpoint, with endpoints a test changes and every GET counted."""

    def __init__(self) -> None:
        self.endpoints = ["10.0.0.1:8001"]
        self.gets = 0
        self.release = threading.Event()  # answers wait for it once `hold` is set
        self.hold = False
        self.server = make_server("127.0.0.1", 0, self, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __call__(self, environ, start_response):
        request = Request(environ)
        self.gets += 1
        if self.hold:
            self.release.wait(10)
        if not request.path.endswith("/models/m1"):
            return Response('{"error": "not_found"}', 404, content_type="application/json")(environ, start_response)
        body = {"name": "m1", "pack": "pack-1", "status": "servable", "request_parameters": {"model_id": "m1"},
                "endpoints": [{"server": f"s{i}", "grpc_url": url} for i, url in enumerate(self.endpoints)],
                "signature": {"inputs": [{"name": "INPUT__0", "dtype": "FP32", "shape": [-1, 4]}],
                              "outputs": [{"name": "OUTPUT__0", "dtype": "FP32", "shape": [-1, 2]}]}}
        return Response(json.dumps(body), 200, content_type="application/json")(environ, start_response)


@pytest.fixture
def api():
    model_api = ModelApi()
    yield model_api
    model_api.release.set()
    model_api.server.shutdown()


def test_a_route_past_its_refresh_age_answers_from_the_cache_and_a_new_replica_appears_in_the_background(api):
    with FleetClient(api.url, "t", refresh_after_s=0.0, cache_ttl_s=60) as client:
        assert client.routes.resolve("m1").endpoints == ("10.0.0.1:8001",)
        api.endpoints.append("10.0.0.2:8001")  # the reconciler loaded a second replica
        api.hold = True  # the control plane is slow now
        assert client.routes.resolve("m1").endpoints == ("10.0.0.1:8001",), \
            "the caller is answered from the cache, not held up by the control plane"
        api.release.set()
        wait_for(lambda: client.routes.resolve("m1").endpoints == ("10.0.0.1:8001", "10.0.0.2:8001"),
                 timeout_s=10, what="the background refresh to bring the new replica")


def test_many_callers_of_a_stale_route_cause_one_refresh_at_a_time(api):
    with FleetClient(api.url, "t", refresh_after_s=0.0, cache_ttl_s=60) as client:
        client.routes.resolve("m1")
        assert api.gets == 1
        api.hold = True
        with ThreadPoolExecutor(8) as pool:
            routes = list(pool.map(lambda _: client.routes.resolve("m1"), range(200)))
        assert all(r.endpoints == ("10.0.0.1:8001",) for r in routes)
        wait_for(lambda: api.gets >= 2, timeout_s=10, what="the background refresh to reach the control plane")
        api.endpoints.append("10.0.0.2:8001")
        client.routes.refresh_after_s = 60  # from here on, reading the route starts no refresh
        api.release.set()
        wait_for(lambda: len(client.routes.resolve("m1").endpoints) == 2, timeout_s=10, what="the refresh")
        assert api.gets == 2, "one refresh in flight for the model, however many requests found it stale"


def test_a_young_route_is_not_asked_for_again_and_an_unknown_model_still_says_so(api):
    with FleetClient(api.url, "t", refresh_after_s=30, cache_ttl_s=60) as client:
        for _ in range(50):
            client.routes.resolve("m1")
        assert api.gets == 1
        with pytest.raises(ModelNotFound, match="not registered"):
            client.routes.resolve("nope")


def test_an_unreachable_control_plane_leaves_the_last_known_replicas_in_use(api):
    with FleetClient(api.url, "t", refresh_after_s=0.0, cache_ttl_s=0.0) as client:
        first = client.routes.resolve("m1")
        api.server.shutdown()
        api.server.server_close()
        assert client.routes.resolve("m1").endpoints == first.endpoints


def test_a_grpc_client_is_closed_once_and_never_by_the_garbage_collector():
    """Under gevent (locust) a close run by the garbage collector can deadlock gRPC: seen as a locust that
    wrote its stats and never exited, stuck in tritonclient's __del__ -> Channel._close."""
    closes: list[str] = []
    closed = GrpcClient("127.0.0.1:1")
    closed._channel.close = lambda: closes.append("closed")
    closed.close()
    closed.close()
    assert closes == ["closed"], "a second close does not reach the channel"
    forgotten = GrpcClient("127.0.0.1:1")
    forgotten._channel.close = lambda: closes.append("forgotten")
    del closed, forgotten
    gc.collect()
    assert closes == ["closed"], "the collector closes nothing"
