"""Locust load of OpenRTB bid requests on the ``adfilter`` Triton model, at a target rate.

    locust -f loadtest/bid_requests.py --host 127.0.0.1:8001 --headless -u 20 -r 20 -t 60s \
        --rps-per-user 50 --csv results/adfilter

Each user paces itself with locust's ``constant_throughput`` (``--rps-per-user``), so the offered load
is users x rps-per-user whatever the latency, as an exchange's traffic would be. Requests are varied
synthetic OpenRTB 2.5/2.6 auctions (``adfilter.synthetic``), serialised once per process; each is sent as
raw JSON bytes. Successful requests are named by the decision, ``adfilter:filtered`` and
``adfilter:kept``, so the statistics show the rate and latency of the filter decision and the share it
drops; failed ones are named ``adfilter``.
"""
from __future__ import annotations

import argparse
import random

import tritonclient.grpc as grpcclient
from locust import User, events, task
from locust.env import Environment
from locust.exception import StopUser

from loadtest.bid_payloads import FILTERED_NAME, MODEL_NAME, bid_input, bid_request_bodies, requested_outputs
from loadtest.locust_grpc import ClientPool, pacing, runs_load, send, stop_run, worker_index

_inputs: list[grpcclient.InferInput] = []  # one BYTES tensor per pre-serialised request


@events.init_command_line_parser.add_listener
def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bid-requests", type=int, default=2000, env_var="LOCUST_BID_REQUESTS",
                        help="Distinct synthetic bid requests per load-generating process.")
    parser.add_argument("--bid-seed", type=int, default=0, env_var="LOCUST_BID_SEED",
                        help="Seed of the synthetic requests (each worker adds its index).")


@events.test_start.add_listener
def _build_requests(environment: Environment, **_: object) -> None:
    global _inputs
    if not runs_load(environment):
        return
    options = environment.parsed_options
    if options.bid_requests < 1:
        stop_run(environment, f"--bid-requests must be at least 1, got {options.bid_requests}")
        return
    bodies = bid_request_bodies(options.bid_requests, options.bid_seed + worker_index(environment))
    _inputs = [bid_input(body) for body in bodies]


def decision_name(result: grpcclient.InferResult) -> str:
    return f"{MODEL_NAME}:{'filtered' if result.as_numpy(FILTERED_NAME)[0, 0] else 'kept'}"


class BidRequestUser(User):
    """An exchange front end asking the filter whether to forward each auction to the demand partner."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        self._pace = pacing(options.rps_per_user)
        self._timeout_s = options.request_timeout
        self._clients = ClientPool()
        self._outputs = requested_outputs()
        # A random starting point, so users do not send the same request at the same moment.
        self._position = random.randrange(len(_inputs)) if _inputs else 0

    def wait_time(self) -> float:
        return self._pace(self)

    @task
    def decide(self) -> None:
        if not _inputs:
            raise StopUser()
        self._position = (self._position + 1) % len(_inputs)
        send(self.environment, self._clients.get(self.host), MODEL_NAME, [_inputs[self._position]], None,
             MODEL_NAME, self._timeout_s, outputs=self._outputs, name_result=decision_name)

    def on_stop(self) -> None:
        self._clients.close()
