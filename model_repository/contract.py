"""The data-plane contract: what a pack promises its callers, written down once.

Every party that talks to a pack reads its words from here: the repository builder and the control plane
(which parameter names a member, which member the stub probe asks for), clients and load generators (the
request parameter), the sync and the reconciler (the metrics a server exports, parsed by `parse_metrics`),
and anyone who must tell one refusal from another (the error codes, matched by code, never by text).

The pack runtime (triton/backends/pack/model.py) is copied into every pack and may import only torch,
numpy and Triton's pb_utils, so it keeps its own copies of these words; tests/data_plane/test_contract.py
loads it and checks that every copy equals the value here.

Why a tag in the message for error codes: Triton carries a Python-backend error to the client as a status
(gRPC code / HTTP status) and a message, nothing else. The status is too coarse (an unknown member and a
member still loading are both "try elsewhere"; a bad shape and a member too large for the pack may share
one), and the message's wording is for people and changes. So the runtime starts every error message with
a stable tag, ``[fleet:<code>]``, that survives both protocols, JSON wrapping and tritonclient's own
``[StatusCode.X]`` prefix; `error_code` finds it anywhere in a message.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

# ---- requests ----------------------------------------------------------------------------------------
# The KServe v2 request parameter that names the member a request is for (a pack hosts many).
MODEL_ID_PARAMETER = "model_id"
# The stub probe names a member no pack can hold (model names start with a letter or digit): a live stub
# refuses it with ErrorCode.UNKNOWN_MEMBER without running any model (Triton's model readiness stays 200
# after a Python-backend stub dies, so only a request that reaches the stub tells).
PROBE_MEMBER = "__fleet_probe__"


def request_parameters(member: str) -> dict[str, str]:
    """The request parameters that route a request to `member` inside its pack."""
    return {MODEL_ID_PARAMETER: member}


def http_infer_path(model: str) -> str:
    """KServe v2's HTTP inference path of a Triton model (a pack or a dedicated model)."""
    return f"/v2/models/{model}/infer"


# ---- error codes ----------------------------------------------------------------------------------------
class ErrorCode(StrEnum):
    """Why the pack runtime refused one request; the tag `[fleet:<value>]` starts its error message."""

    UNKNOWN_MEMBER = "unknown_member"  # not in this pack (NOT_FOUND): ask the control plane where it is
    MEMBER_REQUIRED = "member_required"  # a pack of many members got no model_id (INVALID_ARGUMENT)
    INVALID_INPUT = "invalid_input"  # wrong name, dtype, shape, value range, NaN (INVALID_ARGUMENT)
    ARTIFACT_INVALID = "artifact_invalid"  # the member's file is missing, altered or not loadable
    OVER_BUDGET = "over_budget"  # the member is larger than the pack's residency budget (UNAVAILABLE)
    OVERLOADED = "overloaded"  # load queue full, or waited too long for a load or for room (UNAVAILABLE)
    INVALID_OUTPUT = "invalid_output"  # the member answered something its signature does not allow
    INTERNAL = "internal"  # anything else the runtime caught


ERROR_TAG_PREFIX = "[fleet:"
_ERROR_TAG = re.compile(r"\[fleet:([a-z_]+)\]")
# Runtimes built before the tag (a pack in S3 keeps the runtime it was built with until it is rebuilt) are
# still understood for the one refusal the control plane acts on: the probe's unknown member.
_UNTAGGED = ((re.compile(r"model '[^']*' is not in pack"), ErrorCode.UNKNOWN_MEMBER),)


def tagged(code: ErrorCode | str, message: str) -> str:
    """`message` with its machine-readable tag in front: what the runtime sends."""
    return f"{ERROR_TAG_PREFIX}{ErrorCode(code).value}] {message}"


def error_code(message: str | None) -> ErrorCode | None:
    """The code tagged in an error message (from gRPC, HTTP JSON or a log line); None when there is no
    tag, or an unknown one (an older or newer runtime): callers then fall back to the status code."""
    found = _ERROR_TAG.search(message or "")
    if found is None:
        return next((code for pattern, code in _UNTAGGED if pattern.search(message or "")), None)
    try:
        return ErrorCode(found.group(1))
    except ValueError:
        return None


# ---- metrics ---------------------------------------------------------------------------------------------
# Triton's own counter of successful requests per model (a pack is one model); labels model, version.
TRITON_SUCCESS = "nv_inference_request_success"
# The pack runtime's counters per member; labels pack, member.
MEMBER_REQUESTS = "fleet_member_requests_total"
MEMBER_METRIC_PREFIX = "fleet_member_"
# The pack runtime's gauges and counters per pack instance; label pack.
PACK_METRIC_PREFIX = "fleet_pack_"
# Each cache tier's state per pack instance; labels pack, tier (host, gpu, neuron).
TIER_METRIC_PREFIX = "fleet_tier_"
TIER_GAUGES = ("resident_bytes", "resident_members", "budget_bytes")
TIER_COUNTERS = ("hits", "misses", "evictions", "loads", "load_seconds")  # exported with a _total suffix
LABEL_MODEL, LABEL_PACK, LABEL_MEMBER, LABEL_TIER = "model", "pack", "member", "tier"
TIERS = ("host", "gpu", "neuron")


@dataclass(frozen=True)
class Sample:
    """One sample of Prometheus' text format: name{labels} value."""

    name: str
    labels: dict[str, str]
    value: float


# Parsed here rather than with prometheus_client, which the server image (where the sync sidecar runs)
# does not carry. Triton writes one sample per line; label values escape \\, \" and \n.
_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{([^}]*)\})?[ \t]+(\S+)', re.M)
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def samples(text: str) -> Iterator[Sample]:
    """Every sample of a /metrics page (comments skipped, values that are not numbers skipped)."""
    for name, label_text, value in _SAMPLE.findall(text):
        try:
            number = float(value)
        except ValueError:
            continue
        labels = {key: re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], raw)
                  for key, raw in _LABEL.findall(label_text or "")}
        yield Sample(name, labels, number)


@dataclass
class TierUsage:
    """One tier of one server, summed over its pack instances; counters since each stub started."""

    resident_bytes: float = 0.0
    resident_members: float = 0.0
    budget_bytes: float = 0.0
    hits: float = 0.0
    misses: float = 0.0
    evictions: float = 0.0
    loads: float = 0.0  # loads into the tier (promotions, for the device tiers)
    load_seconds: float = 0.0


@dataclass
class ServerMetrics:
    """What the fleet reads from one server's /metrics page."""

    model_successes: dict[str, float] = field(default_factory=dict)  # model (pack) -> Triton's successes
    member_requests: dict[tuple[str, str], float] = field(default_factory=dict)  # (pack, member) -> requests
    packs: set[str] = field(default_factory=set)  # models that run the pack runtime (export fleet_pack_*)
    tiers: dict[str, TierUsage] = field(default_factory=dict)  # tier -> usage summed over pack instances

    def requests_per_model(self) -> dict[str, float]:
        """model -> requests so far: the members' requests for packs, Triton's successes for other models.

        A pack counts its members' requests, not Triton's successes: Triton 2.51 counts a Python-backend
        error response as a success, so the stub probe (a request for PROBE_MEMBER every few seconds)
        would make every loaded pack look used."""
        per_pack: dict[str, float] = {}
        for (pack, _member), count in self.member_requests.items():
            per_pack[pack] = per_pack.get(pack, 0.0) + count
        return {model: per_pack.get(model, 0.0) if model in self.packs else count
                for model, count in self.model_successes.items()}


def parse_metrics(text: str) -> ServerMetrics:
    """The one parser of a Triton server's /metrics page (the sync's LRU, the reconciler's traffic and
    tier readings, the load tests' server counts)."""
    metrics = ServerMetrics()
    for sample in samples(text):
        name, labels = sample.name, sample.labels
        if name == TRITON_SUCCESS and labels.get(LABEL_MODEL):
            model = labels[LABEL_MODEL]
            metrics.model_successes[model] = metrics.model_successes.get(model, 0.0) + sample.value
        elif name == MEMBER_REQUESTS and LABEL_PACK in labels and LABEL_MEMBER in labels:
            key = (labels[LABEL_PACK], labels[LABEL_MEMBER])
            metrics.member_requests[key] = metrics.member_requests.get(key, 0.0) + sample.value
        elif name.startswith(PACK_METRIC_PREFIX) and LABEL_PACK in labels:
            metrics.packs.add(labels[LABEL_PACK])
        elif name.startswith(TIER_METRIC_PREFIX) and labels.get(LABEL_TIER):
            _add_tier(metrics.tiers, name.removeprefix(TIER_METRIC_PREFIX), labels[LABEL_TIER], sample.value)
    return metrics


def _add_tier(tiers: dict[str, TierUsage], kind: str, tier: str, value: float) -> None:
    if kind.endswith("_total") and kind.removesuffix("_total") in TIER_COUNTERS:
        kind = kind.removesuffix("_total")
    elif kind not in TIER_GAUGES:
        return  # a counter's _created sample, or a kind this reader does not know
    usage = tiers.setdefault(tier, TierUsage())
    setattr(usage, kind, getattr(usage, kind) + value)
