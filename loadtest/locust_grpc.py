"""Locust plumbing shared by the Triton users: gevent-friendly gRPC, request events, pacing, run metadata.

* ``grpc.experimental.gevent.init_gevent()`` runs on import, before any channel exists: without it a
  blocking gRPC call stalls every greenlet of the process, so one user would run at a time.
* Each user owns its clients and closes them in ``on_stop``; an open channel keeps locust from exiting
  after it prints its summary.
* One gRPC connection per simulated user: gRPC shares one TCP connection per address among all channels
  of a process (the global subchannel pool), so behind an NLB a few locust processes would be a few flows
  pinned to a few tasks. ``grpc.use_local_subchannel_pool`` gives each user's channel its own connection,
  so the NLB spreads users over tasks as it would spread bidders.
* ``--server-metrics`` reads each server's own request counter before and after the run
  (loadtest/server_counts.py): the per-task figure beside the through-NLB one.
* Options common to every Triton locustfile are registered here, once, so locustfiles can be combined.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence

import gevent
import grpc.experimental.gevent as grpc_gevent
import tritonclient.grpc as grpcclient
from locust import User, constant, constant_throughput, events
from locust.argument_parser import default_args_dict, get_parser
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from tritonclient.utils import InferenceServerException

from fleet.client import GrpcClient
from loadtest import server_counts
from loadtest.run_meta import RunMeta, describe_machine, write_meta

grpc_gevent.init_gevent()
log = logging.getLogger(__name__)
REQUEST_TYPE = "grpc"


@events.init_command_line_parser.add_listener
def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rps-per-user", type=float, default=0.0, env_var="LOCUST_RPS_PER_USER",
                        help="Requests per second each user aims at (locust constant_throughput); the offered "
                            "load is users x this. 0: no wait, each user sends as fast as answers come.")
    parser.add_argument("--request-timeout", type=float, default=10.0, env_var="LOCUST_REQUEST_TIMEOUT",
                        help="Seconds before a request counts as failed.")
    parser.add_argument("--server-metrics", default="", env_var="LOCUST_SERVER_METRICS",
                        help="Comma-separated metrics endpoints (IP:8002) of the servers behind --host: each "
                             "one's own request count during the run is written to PREFIX_servers.json.")


def grpc_address(host: str) -> str:
    """Locust's --host as tritonclient wants it: host:port, without a scheme."""
    return host.split("://", 1)[-1].rstrip("/")


def pacing(rps_per_user: float) -> Callable[[User], float]:
    return constant_throughput(rps_per_user) if rps_per_user > 0 else constant(0)


def runs_load(environment: Environment) -> bool:
    """Whether this process runs users (a master only aggregates)."""
    return not isinstance(environment.runner, MasterRunner)


# tritonclient's own defaults, plus a subchannel pool of the channel's own: one TCP connection per user.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", False),
    ("grpc.http2.max_pings_without_data", 2),
    ("grpc.use_local_subchannel_pool", 1),
]


class ClientPool:
    """One tritonclient per server address, for one user, each on its own TCP connection."""

    def __init__(self) -> None:
        self._clients: dict[str, grpcclient.InferenceServerClient] = {}

    def get(self, address: str) -> grpcclient.InferenceServerClient:
        client = self._clients.get(address)
        if client is None:
            # GrpcClient: closed only by close(), never by the garbage collector (a close from __del__
            # can deadlock gRPC under gevent; fleet/client.py says how)
            client = self._clients[address] = GrpcClient(grpc_address(address), channel_args=CHANNEL_ARGS)
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def send(environment: Environment, client: grpcclient.InferenceServerClient, model: str,
         inputs: Sequence[grpcclient.InferInput], parameters: dict[str, str] | None, name: str,
         timeout_s: float, outputs: Sequence[grpcclient.InferRequestedOutput] | None = None,
         name_result: Callable[[grpcclient.InferResult], str] | None = None) -> None:
    """One inference, reported as a locust request event named `name` (or `name_result(result)`)."""
    start = time.perf_counter()
    try:
        result = client.infer(model, list(inputs), parameters=parameters, client_timeout=timeout_s,
                              outputs=list(outputs) if outputs else None)
    except InferenceServerException as error:
        environment.events.request.fire(request_type=REQUEST_TYPE, name=name,
                                        response_time=(time.perf_counter() - start) * 1000,
                                        response_length=0, exception=error, context={})
        return
    elapsed_ms = (time.perf_counter() - start) * 1000
    length = sum(len(c) for c in result.get_response().raw_output_contents)
    environment.events.request.fire(request_type=REQUEST_TYPE, name=name_result(result) if name_result else name,
                                    response_time=elapsed_ms, response_length=length, exception=None,
                                    context={})


def worker_index(environment: Environment) -> int:
    return environment.runner.worker_index if isinstance(environment.runner, WorkerRunner) else 0


def worker_seed(environment: Environment, base: int, user_number: int) -> list[int]:
    """Distinct random streams per worker process and user, reproducible for the same layout."""
    return [base, worker_index(environment), user_number]


def stop_run(environment: Environment, message: str) -> None:
    """Abort the run with a non-zero exit code when the workload cannot be built.

    Called from test_start, which runs inside the runner's start(): quitting there is undone by the
    spawning that follows, so the quit is scheduled for just after it.
    """
    log.error(message)
    environment.process_exit_code = 1
    if environment.runner is not None:
        gevent.spawn_later(0, environment.runner.quit)


_server_snapshot: dict[str, server_counts.Snapshot] = {}


def _server_addresses(environment: Environment) -> list[str]:
    options = environment.parsed_options
    value = getattr(options, "server_metrics", "") if options is not None else ""
    return [a for a in (value or "").split(",") if a.strip()]


@events.test_start.add_listener
def _count_server_requests_before(environment: Environment, **_: object) -> None:
    if isinstance(environment.runner, WorkerRunner) or not _server_addresses(environment):
        return
    _server_snapshot["start"] = server_counts.Snapshot(_server_addresses(environment))


@events.test_stop.add_listener
def _count_server_requests_after(environment: Environment, **_: object) -> None:
    start = _server_snapshot.pop("start", None)
    options = environment.parsed_options
    if start is None or options is None or not options.csv_prefix:
        return
    counts = server_counts.Snapshot(_server_addresses(environment)).since(start)
    log.info("per-server request counts written to %s", server_counts.write(options.csv_prefix, counts))


@events.test_stop.add_listener
def _write_run_metadata(environment: Environment, **_: object) -> None:
    """PREFIX_run.json beside locust's PREFIX_stats.csv, for `fleet report`."""
    options = environment.parsed_options
    if options is None or not options.csv_prefix or isinstance(environment.runner, WorkerRunner):
        return
    # Locust's own options and secrets (a token) stay out of the file.
    hidden = set(default_args_dict()) | set(get_parser(default_config_files=[]).secret_args_included_in_web_ui)
    runner = environment.runner
    meta = RunMeta(
        locustfile=str(options.locustfile), host=environment.host or "", users=options.num_users,
        spawn_rate=options.spawn_rate, run_time_s=options.run_time,
        workers=runner.worker_count if isinstance(runner, MasterRunner) else 1,
        options={k: v for k, v in vars(options).items() if k not in hidden and _jsonable(v)},
        machine=describe_machine())
    log.info("run metadata written to %s", write_meta(options.csv_prefix, meta))


def _jsonable(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
