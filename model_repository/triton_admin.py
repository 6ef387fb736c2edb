"""The one client of a Triton server's administrative HTTP API: health, the model-repository extension
(index, load with a config override, unload), a model's config and readiness, the stub probe and the
metrics scrape. The reconciler, the local process runners, `fleet server wait-drained` and the tests all
speak to Triton through it; nothing else builds these URLs.

Why one client: the admin header, the timeouts, how an answer is read (Triton's `{"error": ...}` body,
the generation a pack's config carries) and what a probe answer means were repeated in several places
and drifted. Results are typed (dataclasses), so callers never read an HTTP response themselves.

The fleet's servers restrict the model-repository API to holders of a key (`--http-restricted-api
model-repository:triton-admin-key=KEY`): `ADMIN_HEADER` is that header's name.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import requests

from model_repository.contract import (
    PROBE_MEMBER,
    ErrorCode,
    ServerMetrics,
    error_code,
    http_infer_path,
    parse_metrics,
    request_parameters,
)

ADMIN_HEADER = "triton-admin-key"
PROBE_MAX_ELEMENTS = 2**16  # a probe larger than this is not sent (inconclusive): it would cost a forward pass


class TritonAdminError(RuntimeError):
    """Triton did not answer as asked; `status` is the HTTP status (None: no answer at all)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TritonUnreachable(TritonAdminError):
    """Nothing accepted the connection (the server is down or not started yet)."""


class TritonSlow(TritonAdminError):
    """The server accepted the connection but did not answer in time (busy, or hung)."""


class TritonRefused(TritonAdminError):
    """The model-repository API refused the caller: a missing or wrong admin key."""


@dataclass(frozen=True)
class Liveness:
    """`problem` None: alive. `slow`: it accepted the connection but did not answer in time."""

    problem: str | None
    slow: bool = False

    @property
    def alive(self) -> bool:
        return self.problem is None


@dataclass(frozen=True)
class CallResult:
    """The outcome of a load or unload: `error` None on success, else what to tell a person."""

    error: str | None
    status: int | None = None  # the HTTP status (None: the server could not be reached)
    response: requests.Response | None = field(default=None, repr=False, compare=False)  # the raw answer

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class IndexEntry:
    """One model of the repository index."""

    name: str
    version: str | None = None
    state: str = "READY"
    reason: str = ""


@dataclass(frozen=True)
class ModelConfig:
    """A model's config as the server serves it (Triton's JSON form of config.pbtxt, with overrides)."""

    document: dict = field(default_factory=dict)

    def parameter(self, name: str) -> str | None:
        value = self.document.get("parameters", {}).get(name)
        return value.get("string_value") if isinstance(value, dict) else None

    def int_parameter(self, name: str) -> int:
        """The parameter as an int; -1 when it is missing or not a number."""
        value = self.parameter(name)
        try:
            return int(value) if value is not None else -1
        except ValueError:
            return -1

    def with_parameters(self, values: dict[str, object]) -> dict:
        """The document with string parameters set (falsy values left out): a config override."""
        parameters = {**self.document.get("parameters", {}),
                      **{k: {"string_value": str(v)} for k, v in values.items() if v}}
        return {**self.document, "parameters": parameters}


@dataclass(frozen=True)
class ConfigRead:
    """A model's config, or why it could not be read."""

    config: ModelConfig | None
    error: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    """A stub probe: `problem` None when the pack's stub answered (or the probe was inconclusive: the
    server unreachable or busy, which the health check judges, or inputs too large to send)."""

    problem: str | None
    answered: bool = False  # the runtime itself refused PROBE_MEMBER: its stub is alive

    @property
    def healthy(self) -> bool:
        return self.problem is None


@dataclass
class TritonAdmin:
    """Administrative calls to one Triton server at `http_url` (and its metrics at `metrics_url`).

    `http` is the session to send with (requests.Session is not documented as thread-safe: give each
    thread its own, as the reconciler's `AdminClients` does); a fresh one by default."""

    http_url: str
    admin_key: str | None = None
    metrics_url: str | None = None
    http: requests.Session = field(default_factory=requests.Session, repr=False)

    def __post_init__(self) -> None:
        self.http_url = self.http_url.rstrip("/")

    def _headers(self) -> dict[str, str]:
        return {ADMIN_HEADER: self.admin_key} if self.admin_key is not None else {}

    # ---- health ------------------------------------------------------------------------------------
    def live(self, timeout_s: float = 5.0) -> Liveness:
        """Liveness (not readiness: with strict readiness Triton answers "not ready" while any model loads).
        A server that accepted the connection but did not answer in time is `slow`; one that refused it
        is simply not alive."""
        try:
            response = self.http.get(f"{self.http_url}/v2/health/live", timeout=timeout_s)
        except requests.ReadTimeout:
            return Liveness("slow: accepted the connection but did not answer liveness in time", slow=True)
        except requests.RequestException as error:
            return Liveness(f"unreachable: {type(error).__name__}")
        return Liveness(None) if response.status_code == 200 else Liveness(f"not live (HTTP {response.status_code})")

    def ready(self, timeout_s: float = 2.0) -> bool:
        """Whether the server is ready (with --strict-readiness: every model it was asked to load is)."""
        try:
            return self.http.get(f"{self.http_url}/v2/health/ready", timeout=timeout_s).status_code == 200
        except requests.RequestException:
            return False

    def model_ready(self, model: str, timeout_s: float = 2.0) -> bool | None:
        """Whether `model` is ready; None when the server does not answer."""
        try:
            return self.http.get(f"{self.http_url}/v2/models/{model}/ready", timeout=timeout_s).status_code == 200
        except requests.RequestException:
            return None

    def wait_unloaded(self, model: str, timeout_s: float = 30.0, interval_s: float = 0.1) -> bool:
        """Wait until `model` is no longer ready (or the server stops answering); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.model_ready(model):
                return True
            time.sleep(interval_s)
        return False

    # ---- the model-repository extension (needs the admin key where one is set) ------------------------
    def index(self, ready_only: bool = True, timeout_s: float = 30.0) -> list[IndexEntry]:
        """The repository index (`ready_only`: loaded models only). Raises TritonUnreachable, TritonSlow,
        TritonRefused (the key), or TritonAdminError with the status."""
        try:
            response = self.http.post(f"{self.http_url}/v2/repository/index", json={"ready": ready_only},
                                      headers=self._headers(), timeout=timeout_s)
        except requests.ConnectionError as error:
            raise TritonUnreachable(f"Triton at {self.http_url} does not answer: {type(error).__name__}") from None
        except requests.RequestException as error:
            raise TritonSlow(f"Triton at {self.http_url} did not answer its repository index in {timeout_s:.0f} s: "
                             f"{type(error).__name__}") from None
        if response.status_code in (401, 403) or (response.status_code == 400 and "restricted" in response.text):
            raise TritonRefused(f"Triton at {self.http_url} refused its repository index (HTTP "
                                f"{response.status_code}): its model-repository API is restricted",
                                response.status_code)
        if response.status_code != 200:
            raise TritonAdminError(f"Triton at {self.http_url}: repository index -> HTTP {response.status_code}: "
                                   f"{response.text[:300]}", response.status_code)
        return [IndexEntry(m["name"], m.get("version"), m.get("state", "READY"), m.get("reason", ""))
                for m in response.json()]

    def ready_models(self, timeout_s: float = 30.0) -> set[str]:
        """Names of the models the server has READY."""
        return {m.name for m in self.index(ready_only=True, timeout_s=timeout_s) if m.state == "READY"}

    def load(self, model: str, config: dict | None = None, timeout_s: float = 300.0) -> CallResult:
        """Load (or reload) `model`; with `config`, Triton's config override replaces its config.pbtxt
        for this load (the files stay those on the server's disk)."""
        body = {"parameters": {"config": json.dumps(config)}} if config is not None else None
        return self._repository_call(model, "load", body, timeout_s)

    def unload(self, model: str, timeout_s: float = 300.0) -> CallResult:
        return self._repository_call(model, "unload", None, timeout_s)

    def _repository_call(self, model: str, action: str, body: dict | None, timeout_s: float) -> CallResult:
        try:
            response = self.http.post(f"{self.http_url}/v2/repository/models/{model}/{action}",
                                      headers=self._headers(), json=body, timeout=timeout_s)
        except requests.RequestException as error:
            return CallResult(f"{action} failed: server unreachable ({type(error).__name__})")
        if response.status_code == 200:
            return CallResult(None, 200, response)
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text
        return CallResult(f"{action} failed (HTTP {response.status_code}): {detail[:500]}", response.status_code,
                          response)

    # ---- what a model serves ------------------------------------------------------------------------------
    def config(self, model: str, timeout_s: float = 10.0) -> ConfigRead:
        """The model's config as served (its parameters carry a pack's generation and budgets)."""
        try:
            response = self.http.get(f"{self.http_url}/v2/models/{model}/config", timeout=timeout_s)
        except requests.RequestException as error:
            return ConfigRead(None, f"reading the config back failed: server unreachable ({type(error).__name__})")
        if response.status_code != 200:
            return ConfigRead(None, f"reading the config back failed (HTTP {response.status_code}): "
                                    f"{response.text[:300]}")
        return ConfigRead(ModelConfig(response.json()))

    def server_metadata(self, timeout_s: float = 10.0) -> dict:
        """The server's metadata (name, version, extensions)."""
        response = self.http.get(f"{self.http_url}/v2", timeout=timeout_s)
        response.raise_for_status()
        return response.json()

    def metadata(self, model: str, timeout_s: float = 5.0) -> dict:
        """The model's metadata (inputs and outputs with their shapes and datatypes)."""
        response = self.http.get(f"{self.http_url}/v2/models/{model}", timeout=timeout_s)
        response.raise_for_status()
        return response.json()

    def infer(self, model: str, inputs: list[dict], member: str | None = None,
              timeout_s: float = 30.0) -> requests.Response:
        """One KServe v2 HTTP/JSON request (inputs as {name, datatype, shape, data}), routed to `member`.
        For probes and tests that need the raw answer; applications use fleet.client over gRPC."""
        body: dict = {"inputs": inputs}
        if member is not None:
            body["parameters"] = request_parameters(member)
        return self.http.post(f"{self.http_url}{http_infer_path(model)}", json=body, timeout=timeout_s)

    def probe(self, pack: str, inputs: list[dict], timeout_s: float = 5.0) -> ProbeResult:
        """Ask `pack` for PROBE_MEMBER with zero-filled inputs of its first member's signature
        (`inputs`: [{name, dtype, shape}], batch dimension first). A live stub refuses the member itself
        (ErrorCode.UNKNOWN_MEMBER) without running any model; anything else names a problem."""
        tensors = []
        for spec in inputs:
            shape = [1] + [d if d > 0 else 1 for d in spec["shape"][1:]]
            count = math.prod(shape)
            if count > PROBE_MAX_ELEMENTS:
                return ProbeResult(None)
            tensors.append({"name": spec["name"], "datatype": spec["dtype"], "shape": shape, "data": [0] * count})
        try:
            response = self.infer(pack, tensors, PROBE_MEMBER, timeout_s=timeout_s)
        except requests.RequestException:
            return ProbeResult(None)  # unreachable or busy: the health check decides about the server
        if error_code(response.text) is ErrorCode.UNKNOWN_MEMBER:
            return ProbeResult(None, answered=True)
        return ProbeResult(f"HTTP {response.status_code}: {response.text[:300]}")

    # ---- metrics ------------------------------------------------------------------------------------------
    def metrics_text(self, timeout_s: float = 10.0) -> str:
        """The server's /metrics page (Prometheus text). Raises requests' errors."""
        if not self.metrics_url:
            raise TritonAdminError(f"no metrics URL known for Triton at {self.http_url}")
        return metrics_text(self.metrics_url, timeout_s, self.http)

    def scrape(self, timeout_s: float = 2.0) -> ServerMetrics:
        """The server's metrics, parsed (model_repository.contract.parse_metrics)."""
        return parse_metrics(self.metrics_text(timeout_s))


def metrics_text(metrics_url: str, timeout_s: float = 10.0, http: requests.Session | None = None) -> str:
    """A Triton metrics page by its URL alone (the sync sidecar knows no more of its server). Raises
    requests' errors."""
    response = (http or requests).get(metrics_url, timeout=timeout_s)
    response.raise_for_status()
    return response.text


def scrape(metrics_url: str, timeout_s: float = 2.0, http: requests.Session | None = None) -> ServerMetrics:
    return parse_metrics(metrics_text(metrics_url, timeout_s, http))
