"""Call a model by its own name: `FleetClient(url, token).infer("my-model", {"INPUT__0": x})`.

Why a client at all: a model lives in a pack (one Triton model holding many members) on one or more
servers, and both can change while a client runs (placement moves packs, servers die, replicas come and
go). The client asks the control plane where a model is served (`GET /api/v1/models/{name}`: endpoints
and request parameters), caches the answer (refreshed in the background once it is `refresh_after_s` old,
so a new replica gets traffic within seconds while no request waits on the control plane), spreads
requests over the replicas, and when a replica
answers UNAVAILABLE or NOT_FOUND (or cannot be reached) it resolves again and retries on another
replica. INVALID_ARGUMENT (wrong shape, dtype, range) is the caller's mistake and is never retried.
If the control plane cannot be reached, the last known endpoints keep being used.

Plain tritonclient users can do the same by hand: send the pack name as the model and the
`request_parameters` (`model_id`) as request parameters.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import requests
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpcclient
from tenacity import (
    AsyncRetrying,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from fleet.settings import ClientSettings
from model_repository.contract import request_parameters

# Codes on which another replica (or a fresh resolution) may succeed; everything else is final.
RETRIED_CODES = ("UNAVAILABLE", "NOT_FOUND", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED")
# INTERNAL is final (bad input still answers INTERNAL on older pack runtimes), except a dead stub process,
# which the control plane's stub probe reloads while another replica answers.
RETRIED_INTERNAL = ("Stub process", "is not healthy")


class FleetClientError(RuntimeError):
    """The request cannot succeed; the message says why."""


class ModelNotFound(FleetClientError):
    """The control plane does not know the model."""


class ModelUnavailable(FleetClientError):
    """No replica answered within the retry budget (pending model, all replicas down)."""


class _Retry(Exception):
    """Internal: this attempt failed in a way another attempt may not."""


class GrpcClient(grpcclient.InferenceServerClient):
    """tritonclient's blocking client, closed once and only explicitly.

    tritonclient closes the channel again in `__del__`, whenever the garbage collector gets to the object.
    Under gevent (locust) a collection can run while another greenlet of the same thread holds gRPC's
    channel mutex; that close then waits on the mutex forever and the whole process hangs (seen: a locust
    run that wrote its stats and never exited, stuck in `__del__` -> `Channel._close` -> pthread_mutex_lock).
    So `close` is idempotent and the collector never closes: call `close` (FleetClient.close does).
    """

    _closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            super().close()

    def __del__(self) -> None:
        pass


@dataclass
class Route:
    """Where a model is served now, as the control plane said at `resolved_at`."""

    name: str
    pack: str
    endpoints: tuple[str, ...]
    parameters: dict[str, str]
    inputs: list[dict]
    outputs: list[dict]
    status: str
    resolved_at: float = field(default_factory=time.monotonic)


def code_of(error: InferenceServerException) -> str:
    return (error.status() or "").removeprefix("StatusCode.")


def retried(error: InferenceServerException) -> bool:
    code = code_of(error)
    return code in RETRIED_CODES or (code == "INTERNAL" and any(m in str(error) for m in RETRIED_INTERNAL))


class _Routes:
    """Resolution cache and replica choice, shared by the sync and asyncio clients."""

    def __init__(self, control_plane_url: str, token: str | None, cache_ttl_s: float, bad_for_s: float,
                 refresh_after_s: float = 5.0) -> None:
        self.url = control_plane_url.rstrip("/")
        self.http = requests.Session()
        token = token if token is not None else ClientSettings.from_env().api_token
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.cache_ttl_s, self.bad_for_s = cache_ttl_s, bad_for_s
        self.refresh_after_s = min(refresh_after_s, cache_ttl_s)
        self._refreshing: set[str] = set()  # models whose background refresh is in flight (one at a time)
        self._refresher: ThreadPoolExecutor | None = None
        self._routes: dict[str, Route] = {}
        self._bad: dict[str, float] = {}  # endpoint -> until when it is avoided
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def resolve(self, name: str, refresh: bool = False) -> Route:
        """The model's route: from the cache while younger than `cache_ttl_s` (past `refresh_after_s` a
        background refresh starts and this call still answers from the cache), else from the control plane."""
        cached = self._routes.get(name)
        if cached and not refresh:
            age = time.monotonic() - cached.resolved_at
            if age < self.cache_ttl_s:
                if age >= self.refresh_after_s:
                    self._refresh_in_background(name)
                return cached
        return self._fetch(name, cached)

    def _refresh_in_background(self, name: str) -> None:
        with self._lock:
            if name in self._refreshing:
                return
            self._refreshing.add(name)
            if self._refresher is None:
                self._refresher = ThreadPoolExecutor(2, thread_name_prefix="fleet-routes")

        def refresh() -> None:
            try:
                self._fetch(name, self._routes.get(name))
            except FleetClientError:
                pass  # the cached route stays; a failing request re-resolves in the foreground and says why
            finally:
                with self._lock:
                    self._refreshing.discard(name)

        self._refresher.submit(refresh)

    def close(self) -> None:
        with self._lock:
            refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.shutdown(wait=False, cancel_futures=True)
        self.http.close()

    def _fetch(self, name: str, cached: Route | None) -> Route:
        try:
            response = self.http.get(f"{self.url}/api/v1/models/{name}", timeout=5)
        except requests.RequestException as error:
            if cached:
                return cached  # the control plane is away: the last known replicas are the best guess
            raise ModelUnavailable(f"cannot reach the control plane at {self.url} to resolve '{name}': "
                                   f"{type(error).__name__}") from None
        if response.status_code == 404:
            raise ModelNotFound(f"model '{name}' is not registered at {self.url} (GET /api/v1/models)")
        if response.status_code in (401, 403):
            raise FleetClientError(f"the control plane refused the token (HTTP {response.status_code}): pass "
                                   "token= or set FLEET_API_TOKEN")
        if response.status_code != 200:
            if cached:
                return cached
            raise ModelUnavailable(f"resolving '{name}' failed: HTTP {response.status_code} {response.text[:200]}")
        body = response.json()
        route = Route(name=name, pack=body.get("pack") or "", status=body["status"],
                      endpoints=tuple(e["grpc_url"] for e in body.get("endpoints", [])),
                      parameters=dict(body.get("request_parameters") or {}),
                      inputs=body["signature"]["inputs"], outputs=body["signature"]["outputs"])
        self._routes[name] = route
        return route

    def pick(self, route: Route, avoid: set[str]) -> str:
        if not route.endpoints:
            raise _Retry(f"model '{route.name}' is {route.status}: no server serves it yet")
        now = time.monotonic()
        with self._lock:
            turn = next(self._turn)
            live = [e for e in route.endpoints if e not in avoid and self._bad.get(e, 0) <= now]
            candidates = live or [e for e in route.endpoints if e not in avoid] or list(route.endpoints)
            return candidates[turn % len(candidates)]

    def mark_bad(self, endpoint: str) -> None:
        with self._lock:
            self._bad[endpoint] = time.monotonic() + self.bad_for_s

    @staticmethod
    def tensors(route: Route, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray], module) -> list:
        specs = route.inputs
        if not isinstance(inputs, Mapping):
            if len(inputs) != len(specs):
                raise FleetClientError(f"model '{route.name}' takes {len(specs)} inputs "
                                       f"({[s['name'] for s in specs]}), got {len(inputs)}")
            inputs = {spec["name"]: array for spec, array in zip(specs, inputs, strict=True)}
        unknown = set(inputs) - {s["name"] for s in specs}
        if unknown:
            raise FleetClientError(f"model '{route.name}' has no inputs {sorted(unknown)}; its inputs are "
                                   f"{[s['name'] for s in specs]}")
        tensors = []
        for spec in specs:
            if spec["name"] not in inputs:
                raise FleetClientError(f"input '{spec['name']}' of model '{route.name}' is missing")
            array = np.ascontiguousarray(inputs[spec["name"]], dtype=triton_to_np_dtype(spec["dtype"]))
            tensor = module.InferInput(spec["name"], list(array.shape), spec["dtype"])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return tensors

    @staticmethod
    def outputs(route: Route, result) -> dict[str, np.ndarray]:
        names = [o["name"] for o in route.outputs]
        # Packs name their outputs OUTPUT__k whatever the member calls them; map back by position.
        return {name: result.as_numpy(f"OUTPUT__{k}") if result.as_numpy(name) is None else result.as_numpy(name)
                for k, name in enumerate(names)}


def _policy(attempts: int, deadline_s: float) -> dict:
    return {"retry": retry_if_exception_type(_Retry), "reraise": True,
            "stop": stop_after_attempt(attempts) | stop_after_delay(deadline_s),
            "wait": wait_random_exponential(multiplier=0.02, max=1.0)}


class FleetClient:
    """Blocking client (tritonclient.grpc); one gRPC channel per server, shared by threads.

    Route cache: a model's replicas are asked of the control plane once, then used from the cache; once
    `refresh_after_s` old they are refreshed in the background (one GET per model in use, at most one in
    flight), and after `cache_ttl_s` a request waits for a fresh answer. An unreachable control plane
    leaves the last known replicas in use. A replica that fails is avoided for `bad_for_s`.
    """

    def __init__(self, control_plane_url: str, token: str | None = None, *, attempts: int = 6,
                 deadline_s: float = 30.0, request_timeout_s: float = 10.0, cache_ttl_s: float = 30.0,
                 refresh_after_s: float = 5.0, bad_for_s: float = 2.0) -> None:
        self.routes = _Routes(control_plane_url, token, cache_ttl_s, bad_for_s, refresh_after_s)
        self.attempts, self.deadline_s, self.request_timeout_s = attempts, deadline_s, request_timeout_s
        self._clients: dict[str, grpcclient.InferenceServerClient] = {}
        self._lock = threading.Lock()

    def _client(self, endpoint: str) -> grpcclient.InferenceServerClient:
        with self._lock:
            if endpoint not in self._clients:
                self._clients[endpoint] = GrpcClient(endpoint)
            return self._clients[endpoint]

    def infer(self, name: str, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Run model `name`; returns its outputs by name. Raises FleetClientError subclasses, or
        tritonclient's InferenceServerException for errors no retry can fix (INVALID_ARGUMENT)."""
        route_of: dict[str, Route] = {}

        def tensors(route: Route) -> list:
            route_of["last"] = route
            return self.routes.tensors(route, inputs, grpcclient)

        result = self._infer(name, tensors)
        return self.routes.outputs(route_of["last"], result)

    def infer_tensors(self, name: str, tensors: Sequence[grpcclient.InferInput]) -> grpcclient.InferResult:
        """Like `infer`, with tensors already built (load generators build them once, ahead of time)."""
        return self._infer(name, lambda _route: list(tensors))

    def _infer(self, name: str, tensors_for) -> grpcclient.InferResult:
        tried: set[str] = set()
        state = {"refresh": False}

        def attempt() -> grpcclient.InferResult:
            route = self.routes.resolve(name, refresh=state["refresh"])
            endpoint = self.routes.pick(route, tried)
            try:
                return self._client(endpoint).infer(route.pack, tensors_for(route), parameters=route.parameters,
                                                    client_timeout=self.request_timeout_s)
            except InferenceServerException as error:
                if not retried(error):
                    raise
                tried.add(endpoint)
                self.routes.mark_bad(endpoint)
                state["refresh"] = True
                raise _Retry(f"{endpoint}: {error}") from None

        try:
            return Retrying(**_policy(self.attempts, self.deadline_s))(attempt)
        except _Retry as error:
            raise ModelUnavailable(f"model '{name}' could not be served after {self.attempts} attempts: "
                                   f"{error}") from None

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
        self.routes.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFleetClient:
    """asyncio client (tritonclient.grpc.aio); resolutions run in a worker thread."""

    def __init__(self, control_plane_url: str, token: str | None = None, *, attempts: int = 6,
                 deadline_s: float = 30.0, request_timeout_s: float = 10.0, cache_ttl_s: float = 30.0,
                 refresh_after_s: float = 5.0, bad_for_s: float = 2.0) -> None:
        self.routes = _Routes(control_plane_url, token, cache_ttl_s, bad_for_s, refresh_after_s)
        self.attempts, self.deadline_s, self.request_timeout_s = attempts, deadline_s, request_timeout_s
        self._clients: dict[str, aiogrpcclient.InferenceServerClient] = {}

    def _client(self, endpoint: str) -> aiogrpcclient.InferenceServerClient:
        if endpoint not in self._clients:
            self._clients[endpoint] = aiogrpcclient.InferenceServerClient(endpoint)
        return self._clients[endpoint]

    async def infer(self, name: str,
                    inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        tried: set[str] = set()
        refresh = False
        try:
            async for attempt in AsyncRetrying(**_policy(self.attempts, self.deadline_s)):
                with attempt:
                    route = await asyncio.to_thread(self.routes.resolve, name, refresh)
                    endpoint = self.routes.pick(route, tried)
                    try:
                        result = await self._client(endpoint).infer(
                            route.pack, self.routes.tensors(route, inputs, aiogrpcclient),
                            parameters=route.parameters, client_timeout=self.request_timeout_s)
                    except InferenceServerException as error:
                        if not retried(error):
                            raise
                        tried.add(endpoint)
                        self.routes.mark_bad(endpoint)
                        refresh = True
                        raise _Retry(f"{endpoint}: {error}") from None
                    return self.routes.outputs(route, result)
        except _Retry as error:
            raise ModelUnavailable(f"model '{name}' could not be served after {self.attempts} attempts: "
                                   f"{error}") from None
        raise AssertionError("unreachable")

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        self.routes.close()


# ---- one register and one infer helper, for scripts, load generators, benchmarks and tests --------------
def signature_of(entry) -> dict:
    """A model's signature as the API takes it, from anything with `inputs` and `outputs` (a manifest entry
    of `fleet generate`, or a dict that already is one)."""
    if isinstance(entry, Mapping):
        return {"inputs": list(entry["inputs"]), "outputs": list(entry["outputs"])}
    return {"inputs": [spec.model_dump(mode="json") for spec in entry.inputs],
            "outputs": [spec.model_dump(mode="json") for spec in entry.outputs]}


def register(control_plane_url: str, name: str, artifact: str | os.PathLike | bytes, signature: Mapping | str, *,
             token: str | None = None, family: str | None = None, architecture: str | None = None,
             filename: str | None = None, http: requests.Session | None = None,
             timeout_s: float = 120.0) -> requests.Response:
    """Register a model by uploading its artifact (`POST /api/v1/models`: TorchScript .pt or torch.export
    .pt2) with its signature (`signature_of`); returns the response (201 new, 200 the same content again,
    4xx with the reason). The file streams from disk; `token` defaults to FLEET_API_TOKEN. `family`: the
    compute family (cpu, gpu, inf2); `architecture`: the architecture it declares (docs/control-plane.md)."""
    token = token if token is not None else ClientSettings.from_env().api_token
    session = http or requests.Session()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    form = {"name": name, "signature": signature if isinstance(signature, str) else json.dumps(signature)}
    if family:
        form["family"] = family
    if architecture:
        form["architecture"] = architecture
    try:
        if isinstance(artifact, bytes):
            return session.post(f"{control_plane_url.rstrip('/')}/api/v1/models", data=form, headers=headers,
                                files={"artifact": (filename or "model.pt", artifact)}, timeout=timeout_s)
        with open(artifact, "rb") as stream:
            return session.post(f"{control_plane_url.rstrip('/')}/api/v1/models", data=form, headers=headers,
                                files={"artifact": (filename or os.path.basename(artifact), stream)},
                                timeout=timeout_s)
    finally:
        if http is None:
            session.close()


def infer_at(grpc_url: str, model: str, inputs: Mapping[str, np.ndarray], member: str | None = None, *,
             datatypes: Mapping[str, str] | None = None, timeout_s: float = 30.0,
             client: grpcclient.InferenceServerClient | None = None) -> grpcclient.InferResult:
    """One request to a given server and Triton model (a pack, routed to `member` by the request parameter),
    without asking the control plane: for callers that chose the replica themselves. Datatypes follow the
    arrays' dtypes unless `datatypes` names them (BF16 has no numpy dtype). `client`: a channel to reuse
    (kept open); else one is opened and closed. Raises tritonclient's InferenceServerException as the server
    answered."""
    own = client is None
    client = client or GrpcClient(grpc_url)
    try:
        tensors = []
        for name, array in inputs.items():
            datatype = (datatypes or {}).get(name) or np_to_triton_dtype(array.dtype)
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return client.infer(model, tensors, parameters=request_parameters(member) if member else None,
                            client_timeout=timeout_s)
    finally:
        if own:
            client.close()
