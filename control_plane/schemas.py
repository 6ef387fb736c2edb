"""Request and response schemas (pydantic); APIFlask validates with them and publishes them in OpenAPI."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model_repository.formats import DTYPES, INTEGER_DTYPES, ArtifactFormat, TritonDType

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
Family = Literal["cpu", "gpu", "inf2"]


# Limits on a declared tensor: far above any real model's, low enough that one request cannot ask the
# server for an absurd allocation. Each error message names the limit and what to change.
MAX_RANK = 8
MAX_DIM = 1 << 20
MAX_ELEMENTS = 1 << 28  # per batch item, counting only the fixed (non -1) dimensions
MAX_TENSORS = 16
# The values each integer dtype can hold; a value_range must fit inside.
INTEGER_LIMITS = {"INT64": (-(2**63), 2**63 - 1), "INT32": (-(2**31), 2**31 - 1), "INT8": (-128, 127),
                  "UINT8": (0, 255)}


class TensorSignature(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^(INPUT|OUTPUT)__[0-9]{1,2}$", examples=["INPUT__0"])
    dtype: TritonDType = Field(description="Triton's name: " + ", ".join(DTYPES))
    shape: list[int] = Field(min_length=1, description="first dimension is the batch: -1; then -1 (any size) "
                                                       f"or 1..{MAX_DIM}; at most {MAX_RANK} dimensions")
    value_range: tuple[int, int] | None = Field(
        None, description="integer inputs only: half-open [low, high) of valid values, e.g. token ids "
                          "[0, vocab); the validator draws its test inputs from it")

    @field_validator("shape")
    @classmethod
    def _batch_first(cls, shape: list[int]) -> list[int]:
        if len(shape) > MAX_RANK:
            raise ValueError(f"rank {len(shape)} is above the limit of {MAX_RANK} dimensions (batch included); "
                             "reshape the tensor to fewer dimensions")
        if shape[0] != -1:
            raise ValueError("the first dimension is the batch and must be -1")
        if any(d == 0 or d < -1 or d > MAX_DIM for d in shape[1:]):
            raise ValueError(f"dimensions after the batch must be -1 (any size) or between 1 and {MAX_DIM}")
        if math.prod(d for d in shape[1:] if d > 0) > MAX_ELEMENTS:
            raise ValueError(f"the fixed dimensions hold more than {MAX_ELEMENTS} elements per batch item; "
                             "declare large dimensions as -1 or split the tensor")
        return shape

    @model_validator(mode="after")
    def _value_range_fits_dtype(self) -> TensorSignature:
        if self.value_range is None:
            return self
        if self.dtype not in INTEGER_DTYPES:
            raise ValueError(f"value_range is for integer inputs ({', '.join(sorted(INTEGER_DTYPES))}); "
                             f"{self.name} is {self.dtype}: remove value_range")
        low, high = self.value_range
        smallest, largest = INTEGER_LIMITS[self.dtype]
        if not (smallest <= low < high <= largest + 1):
            raise ValueError(f"value_range [{low}, {high}) of {self.name} must satisfy low < high and fit "
                             f"{self.dtype} ([{smallest}, {largest + 1}))")
        return self


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[TensorSignature] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs: list[TensorSignature] = Field(min_length=1, max_length=MAX_TENSORS)

    @field_validator("inputs")
    @classmethod
    def _inputs_named_in_order(cls, specs: list[TensorSignature]) -> list[TensorSignature]:
        if [s.name for s in specs] != [f"INPUT__{k}" for k in range(len(specs))]:
            raise ValueError("inputs must be named INPUT__0, INPUT__1, ... in order")
        return specs

    @field_validator("outputs")
    @classmethod
    def _outputs_named_in_order(cls, specs: list[TensorSignature]) -> list[TensorSignature]:
        if [s.name for s in specs] != [f"OUTPUT__{k}" for k in range(len(specs))]:
            raise ValueError("outputs must be named OUTPUT__0, OUTPUT__1, ... in order")
        if any(s.value_range is not None for s in specs):
            raise ValueError("value_range applies to inputs only; remove it from the outputs")
        return specs


class RegisterFromS3(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    s3_uri: str = Field(pattern=r"^s3://", examples=["s3://fleet-models/repository/uploads/my-model.pt2"],
                        description="a TorchScript (.pt) or torch.export (.pt2) archive in the bucket")
    signature: Signature
    family: Family = "cpu"


class ModelListQuery(BaseModel):
    page: int = Field(1, ge=1)
    per_page: int = Field(100, ge=1, le=1000)
    family: Family | None = None
    status: Literal["servable", "pending", "unloaded"] | None = None
    pack: str | None = None
    name_prefix: str | None = Field(None, max_length=128)


class Endpoint(BaseModel):
    server: str
    grpc_url: str
    http_url: str


class ArchitectureRef(BaseModel):
    id: str = Field(description="content address of the program and its tensor table (weights excluded)")
    format: ArtifactFormat
    parameter_bytes: int = Field(description="one member's weights: the bytes of its tensor table")
    members: int = Field(description="registered models whose current version has this architecture")


class ModelOut(BaseModel):
    name: str
    version: int
    sha256: str
    bytes: int
    format: ArtifactFormat = Field(description="detected from the artifact: torchscript or torch_export")
    family: str
    pack: str | None
    status: Literal["servable", "pending", "unloaded"]
    pending_reason: str | None = Field(None, description="why the model is not servable yet (pending only)")
    signature: Signature
    endpoints: list[Endpoint] = Field(description="where to send KServe v2 gRPC requests")
    request_parameters: dict[str, str] = Field(description="parameters to put on each inference request")
    architecture: ArchitectureRef | None = Field(None, description="the architecture family it belongs to: its "
                                                 "program is stored and loaded once for all members, the member is "
                                                 "its weights; null when the artifact is served whole")
    whole_artifact_reason: str | None = Field(None, description="why the artifact is served whole (not split into "
                                              "program and weights); null when it was split")
    created_at: datetime


class ArchitectureOut(BaseModel):
    id: str
    format: ArtifactFormat
    program_sha256: str
    program_bytes: int = Field(description="the program's file: code, graph and constants, no weights")
    parameter_bytes: int = Field(description="one member's weights")
    tensors: int = Field(description="parameters and buffers in its tensor table")
    members: int
    packs: list[str] = Field(description="packs holding members of this architecture")
    created_at: datetime


class ArchitectureDetail(ArchitectureOut):
    table: list[dict] = Field(description="the tensor table a member's weights must match: name, kind, dtype, "
                                          "shape, requires_grad")
    member_names: list[str] = Field(description="up to 1,000 member names")


class ArchitectureList(BaseModel):
    items: list[ArchitectureOut]


class ModelPage(BaseModel):
    items: list[ModelOut]
    page: int
    per_page: int
    total: int


class VersionOut(BaseModel):
    model: str
    version: int
    sha256: str
    bytes: int
    format: ArtifactFormat
    created_at: datetime


class VersionList(BaseModel):
    items: list[VersionOut]


class ServerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    family: Family
    http_url: str = Field(pattern=r"^https?://[^/\s]+$")
    grpc_url: str = Field(pattern=r"^[^/\s]+:[0-9]+$")
    capacity_bytes: int | None = Field(None, ge=64 * 2**20, le=2**63 - 1, description="host RAM budget for pack "
                                       "replicas; default: the instance type's")  # stored as a SQL BIGINT
    repository_path: str | None = Field(None, description="local servers only: where to sync packs")
    metrics_url: str | None = Field(None, pattern=r"^https?://\S+$", description="Triton's Prometheus metrics, "
                                    "for request rates per pack (replicas for hot packs)")
    instance_type: str | None = Field(None, max_length=64, examples=["g4dn.xlarge"],
                                      description="fills in the tier budgets not given")
    disk_budget_bytes: int | None = Field(None, ge=0, le=2**63 - 1, description="the sync's disk cache")
    gpu_budget_bytes: int | None = Field(None, ge=0, le=2**63 - 1, description="gpu family: GPU memory")
    neuron_cores: int | None = Field(None, ge=1, le=192, description="inf2 family: NeuronCores")


class TierBudgetsOut(BaseModel):
    host_ram_bytes: int
    disk_bytes: int | None
    gpu_bytes: int | None
    neuron_cores: int | None


class TierStateOut(BaseModel):
    resident_bytes: int = Field(description="bytes charged for the members resident in the tier")
    resident_members: int
    budget_bytes: int = Field(description="the tier's budget, summed over the server's pack instances")
    hits: int = Field(description="requests whose member was resident in the tier (since each stub started)")
    misses: int
    evictions: int
    loads: int = Field(description="members loaded into the tier (for gpu and neuron: promotions from host "
                                   "RAM, no disk read)")
    load_seconds: float


class TierUsageOut(BaseModel):
    scraped_at: datetime | None = Field(description="when the reconciler last read the server's metrics (host, "
                                        "gpu, neuron); null if only the disk tier was reported yet")
    disk_synced_at: datetime | None = Field(None, description="when the server's sync wrote the disk tier's "
                                            "figures; null without a disk tier")
    tiers: dict[str, TierStateOut] = Field(description="per tier: host (pack residency in host RAM), gpu "
                                           "(gpu family) or neuron (inf2, summed over NeuronCores), from "
                                           "Triton's metrics; disk (members are packs, loads are packs "
                                           "downloaded, load_seconds the seconds spent downloading, counters "
                                           "since the sync's state began, budget -1: whole repository), from "
                                           "the server's sync (docs/fleet-data.md)")


class ServerOut(BaseModel):
    name: str
    family: str
    http_url: str
    grpc_url: str
    capacity_bytes: int = Field(description="host RAM budget for pack replicas (tiers.host_ram_bytes)")
    instance_type: str | None = None
    tiers: TierBudgetsOut
    tier_usage: TierUsageOut | None = Field(None, description="what each tier held at the last scrape of the "
                                            "server's metrics and its sync's last status; null until either "
                                            "was read")
    reserved_bytes: int = Field(description="host RAM its placements reserve")
    free_bytes: int
    healthy: bool
    draining: bool = Field(description="gets no new replicas; its replicas move elsewhere before unloading")
    last_seen: datetime | None
    last_error: str | None
    placed_packs: list[str]


class ServerList(BaseModel):
    items: list[ServerOut]


class PlacementOut(BaseModel):
    pack: str
    server: str
    state: str
    generation: int
    loaded_generation: int
    members: int
    reserved_bytes: int
    residency_bytes: int = Field(description="the residency budget (max_resident_bytes) it was read back to run with")
    retiring: bool = Field(description="surplus: served until the pack's other replicas are loaded, then unloaded")
    error: str | None


class PlacementList(BaseModel):
    items: list[PlacementOut]


class LoadTestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: Literal["local", "eks", "ecs"] = "local"
    users: int = Field(16, ge=1, le=10000)
    spawn_rate: float = Field(16, gt=0)
    duration_s: int = Field(20, ge=1, le=3600)
    mix: Literal["uniform", "zipf"] = "zipf"
    zipf_s: float = Field(1.1, gt=0)
    processes: int = Field(1, ge=1, le=64)


class LoadTestOut(BaseModel):
    id: int
    target: str
    status: str
    spec: dict
    results: dict | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class LoadTestList(BaseModel):
    items: list[LoadTestOut]


class DeploymentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: Literal["local", "eks", "ecs"]
    replicas: dict[Family, int] = Field(default_factory=lambda: {"cpu": 1})
    image_tag: str = "0.1.0"
    region: str | None = None


class DeploymentOut(BaseModel):
    id: int
    target: str
    status: str
    spec: dict
    error: str | None
    created_at: datetime


class Message(BaseModel):
    message: str
