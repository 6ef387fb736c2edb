"""Request and response schemas (pydantic); APIFlask validates with them and publishes them in OpenAPI."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
Family = Literal["cpu", "gpu", "inf2"]


class TensorSignature(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^(INPUT|OUTPUT)__[0-9]{1,2}$", examples=["INPUT__0"])
    dtype: Literal["FP32", "INT64"]
    shape: list[int] = Field(min_length=1, max_length=6, description="first dimension is the batch: -1")
    value_range: tuple[int, int] | None = None

    @field_validator("shape")
    @classmethod
    def _batch_first(cls, shape: list[int]) -> list[int]:
        if shape[0] != -1:
            raise ValueError("the first dimension is the batch and must be -1")
        if any(d == 0 or d < -1 or d > 65536 for d in shape[1:]):
            raise ValueError("dimensions after the batch must be -1 or between 1 and 65536")
        return shape


class Signature(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[TensorSignature] = Field(min_length=1, max_length=8)
    outputs: list[TensorSignature] = Field(min_length=1, max_length=8)

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
        if any(s.dtype != "FP32" for s in specs):
            raise ValueError("outputs must be FP32")
        return specs


class RegisterFromS3(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    s3_uri: str = Field(pattern=r"^s3://", examples=["s3://fleet-models/uploads/my-model.pt"])
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


class ModelOut(BaseModel):
    name: str
    version: int
    sha256: str
    bytes: int
    family: str
    pack: str | None
    status: Literal["servable", "pending", "unloaded"]
    pending_reason: str | None = Field(None, description="why the model is not servable yet (pending only)")
    signature: Signature
    endpoints: list[Endpoint] = Field(description="where to send KServe v2 gRPC requests")
    request_parameters: dict[str, str] = Field(description="parameters to put on each inference request")
    created_at: datetime


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


class ServerOut(BaseModel):
    name: str
    family: str
    http_url: str
    grpc_url: str
    capacity_bytes: int = Field(description="host RAM budget for pack replicas (tiers.host_ram_bytes)")
    instance_type: str | None = None
    tiers: TierBudgetsOut
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
