"""Locust load over thousands of user models served in packs by Triton (KServe v2 gRPC).

    locust -f loadtest/triton_models.py --host 127.0.0.1:8001 \
        --models-from generated/models/manifest.json --pack-size 100 --mix zipf --zipf-s 1.1
    locust -f loadtest/triton_models.py --host 127.0.0.1:8001 \
        --models-from http://127.0.0.1:5000 --token "$FLEET_API_TOKEN" --mix uniform

Each request goes to a pack (the Triton model) and names its member with the request parameter
``model_id``; statistics are per member (or pack/member, or pack: ``--name-by``). Works headless
(``--headless --csv PREFIX --html FILE``), with ``--processes N`` and as ``--master`` / ``--worker``:
every load-generating process builds its own workload when the test starts, from the master's options.
"""
from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path

import gevent
from locust import User, events, task
from locust.env import Environment
from locust.exception import StopUser

from fleet.settings import ClientSettings
from loadtest.catalogue import CatalogueError, load_catalogue
from loadtest.locust_grpc import ClientPool, pacing, runs_load, send, stop_run, worker_seed
from loadtest.mix import MIXES, MixError
from loadtest.workload import NAME_BY, Workload, build_workload

_workload: Workload | None = None
_user_numbers = itertools.count()
# model id -> gRPC host:port, from the latest catalogue refresh (overrides the one the workload was built with)
_servers: dict[str, str | None] = {}
_refresher: gevent.Greenlet | None = None
log = logging.getLogger(__name__)


@events.init_command_line_parser.add_listener
def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-from", default="", env_var="LOCUST_MODELS_FROM",
                        help="Control-plane URL (http[s]://...) or a manifest.json (or its folder).")
    parser.add_argument("--token", default=ClientSettings.from_env().api_token or "", is_secret=True,
                        help="Control-plane API token (default: $FLEET_API_TOKEN).")
    parser.add_argument("--pack-size", type=int, default=100, env_var="LOCUST_PACK_SIZE",
                        help="With a manifest: the --pack-size the repository was built with.")
    parser.add_argument("--mix", choices=MIXES, default="zipf", env_var="LOCUST_MIX",
                        help="Traffic over models: uniform, zipf (1/rank^s) or file (--weights-file).")
    parser.add_argument("--zipf-s", type=float, default=1.1, env_var="LOCUST_ZIPF_S",
                        help="Zipf exponent: higher is more skewed.")
    parser.add_argument("--weights-file", default="", env_var="LOCUST_WEIGHTS_FILE",
                        help="CSV 'id,weight' for --mix file.")
    parser.add_argument("--mix-seed", type=int, default=0, env_var="LOCUST_MIX_SEED",
                        help="Seed of zipf ranks, inputs and draws.")
    parser.add_argument("--batch-size", type=int, default=1, env_var="LOCUST_BATCH_SIZE",
                        help="Rows per request.")
    parser.add_argument("--name-by", choices=NAME_BY, default="member", env_var="LOCUST_NAME_BY",
                        help="Request name in statistics.")
    parser.add_argument("--fleet-client", action="store_true", default=False, env_var="LOCUST_FLEET_CLIENT",
                        help="With a control-plane URL: call each model by its name through fleet.client, which "
                             "spreads requests over replicas and retries another replica on UNAVAILABLE/NOT_FOUND.")
    parser.add_argument("--refresh-catalogue", type=float, default=0.0, env_var="LOCUST_REFRESH_CATALOGUE",
                        help="With a control-plane URL: re-read where each model is served every this many "
                             "seconds (0: never), so the load follows models the control plane re-places, "
                             "e.g. after a server dies. With --fleet-client: how often each user refreshes a "
                             "model's replicas in the background (default 30 s).")


@events.test_start.add_listener
def _build_workload(environment: Environment, **_: object) -> None:
    """Load the catalogue and pre-build every request once per load-generating process."""
    global _workload
    if not runs_load(environment):
        return
    options = environment.parsed_options
    if not options.models_from:
        stop_run(environment, "--models-from is required: a control-plane URL or a manifest.json")
        return
    try:
        models = load_catalogue(options.models_from, options.pack_size, options.token or None)
        _workload = build_workload(models, options.mix, options.zipf_s,
                                   Path(options.weights_file) if options.weights_file else None,
                                   options.mix_seed, options.batch_size, options.name_by)
    except (CatalogueError, MixError, ValueError) as error:
        stop_run(environment, f"cannot build the workload: {error}")
        return
    global _refresher
    if options.refresh_catalogue > 0 and options.models_from.startswith(("http://", "https://")):
        _refresher = gevent.spawn(_refresh_servers, options)


def _refresh_servers(options: argparse.Namespace) -> None:
    """Every --refresh-catalogue seconds: where is each servable model now? A model that is not servable
    at the moment (being re-placed) keeps its last known server until it is."""
    while True:
        gevent.sleep(options.refresh_catalogue)
        try:
            models = load_catalogue(options.models_from, options.pack_size, options.token or None)
        except CatalogueError as error:
            log.warning("catalogue refresh failed, keeping the last one: %s", error)
            continue
        moved = {m.id: m.server for m in models if _servers.get(m.id, m.server) != m.server}
        _servers.update({m.id: m.server for m in models})
        if moved:
            log.info("catalogue refresh: %d models now served elsewhere", len(moved))


@events.test_stop.add_listener
def _stop_refresh(**_: object) -> None:
    if _refresher is not None:
        _refresher.kill(block=False)


class TritonModelsUser(User):
    """Sends one inference after another to models drawn from the mix (closed loop unless paced)."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        self._pace = pacing(options.rps_per_user)
        self._timeout_s = options.request_timeout
        self._clients = ClientPool()
        self._fleet = None
        if options.fleet_client and options.models_from.startswith(("http://", "https://")):
            from fleet.client import FleetClient

            # Every user holds its own client: refreshing each model's route every 5 s (the client's
            # default) would multiply GETs on the control plane by users x models; refresh at the
            # catalogue's pace instead (--refresh-catalogue), or only when a route is 30 s old.
            refresh_s = options.refresh_catalogue if options.refresh_catalogue > 0 else 30.0
            self._fleet = FleetClient(options.models_from, options.token or None, refresh_after_s=refresh_s,
                                      cache_ttl_s=max(30.0, refresh_s),
                                      request_timeout_s=self._timeout_s, deadline_s=self._timeout_s)
        seed = worker_seed(environment, options.mix_seed, next(_user_numbers))
        self._sampler = _workload.sampler(seed) if _workload else None

    def wait_time(self) -> float:
        return self._pace(self)

    @task
    def infer(self) -> None:
        if self._sampler is None:  # the workload failed to build; stop_run is shutting the run down
            raise StopUser()
        target = _workload.targets[self._sampler.next()]
        if self._fleet is not None:
            send_by_name(self.environment, self._fleet, target.model.id, target.inputs, target.name)
            return
        server = _servers.get(target.model.id, target.model.server)
        client = self._clients.get(server or self.host)
        send(self.environment, client, target.model.pack, target.inputs, target.parameters, target.name,
             self._timeout_s)

    def on_stop(self) -> None:
        self._clients.close()
        if self._fleet is not None:
            self._fleet.close()


def send_by_name(environment: Environment, fleet, model: str, inputs, name: str) -> None:
    """One inference through fleet.client, reported as a locust request event (retries included)."""
    import time

    start = time.perf_counter()
    try:
        result = fleet.infer_tensors(model, inputs)
    except Exception as error:  # noqa: BLE001  every failure is a failed request in the statistics
        environment.events.request.fire(request_type="grpc", name=name, response_length=0, exception=error,
                                        response_time=(time.perf_counter() - start) * 1000, context={})
        return
    environment.events.request.fire(request_type="grpc", name=name, exception=None, context={},
                                    response_time=(time.perf_counter() - start) * 1000,
                                    response_length=sum(len(c) for c in result.get_response().raw_output_contents))
