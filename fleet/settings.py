"""Every FLEET_* environment variable, in one module: typed, one description per field, one reader.

Each group below is a pydantic model whose field `name` is read from `<env_prefix><NAME>` (upper case) by
`from_env`, the only place that reads FLEET_* variables. docs/configuration.md is rendered from these
classes by `fleet config docs` (its `--check` runs in the tests), and a test fails when a FLEET_* name
appears anywhere in the tree without being declared here.

Why pydantic models with one small reader rather than pydantic-settings' BaseSettings: constructing a group
directly (`ControlPlaneSettings(api_token=...)`, as the tests and the local stack do) must not pick up
whatever the calling process has in its environment, and readers must also accept an explicit mapping (a
rendered pod's environment in tests/k8s); BaseSettings reads os.environ on every construction.

Rules that hold for every group: an empty variable counts as unset; a list is written comma-separated; a
boolean accepts true/false, 1/0, yes/no, on/off. `environment()` renders a group back into variables (the
stack harness starts control planes with it).

This module sits low (fleet.client, the CLI, the control plane and the benchmarks all read it) and imports
nothing from the project.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Literal, Self

from pydantic import BaseModel, Field, field_validator


class EnvGroup(BaseModel):
    """A group of variables sharing a prefix. `env_aliases`: further variables read, in order, when the
    group's own is unset (e.g. AWS_ENDPOINT_URL_S3 for the S3 endpoint)."""

    env_prefix: ClassVar[str] = "FLEET_"
    env_aliases: ClassVar[dict[str, tuple[str, ...]]] = {}
    title: ClassVar[str] = ""
    read_by: ClassVar[str] = ""  # who reads the group, for docs/configuration.md

    @classmethod
    def env_name(cls, field: str) -> str:
        if field not in cls.model_fields:
            raise KeyError(f"{cls.__name__} has no field {field!r}")
        return f"{cls.env_prefix}{field.upper()}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Self:
        """The group from `environ` (default: this process's environment); `overrides` win."""
        environ = os.environ if environ is None else environ
        values = {}
        for name in cls.model_fields:
            for variable in (cls.env_name(name), *cls.env_aliases.get(name, ())):
                if environ.get(variable):
                    values[name] = environ[variable]
                    break
        return cls(**{**values, **overrides})

    def environment(self) -> dict[str, str]:
        """The variables that give this group its values (None fields left out): what a child reads back."""
        rendered = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, list | tuple):
                value = ",".join(str(v) for v in value)
            rendered[self.env_name(name)] = str(value)
        return rendered


class ControlPlaneSettings(EnvGroup):
    """The control plane: REST API, registry, reconciler, load-test runner."""

    title: ClassVar[str] = "Control plane"
    read_by: ClassVar[str] = "`fleet control-plane serve` (control_plane/settings.py, the app factory)"
    env_aliases: ClassVar[dict[str, tuple[str, ...]]] = {"s3_endpoint_url": ("AWS_ENDPOINT_URL_S3",)}

    database_url: str = Field("sqlite:///.fleet/registry.db",
                              description="Any SQLAlchemy URL; SQLite (WAL) by default, PostgreSQL works")
    api_token: str = Field(default_factory=lambda: secrets.token_urlsafe(24),
                           description="Bearer token every /api/v1 call must present (default: a random one "
                           "per start); clients send it too (fleet.client, the locustfile, `fleet server`)")
    triton_admin_key: str | None = Field(None, description="Triton restricted repository-API key (the "
                                         "`triton-admin-key` header); `fleet serve --admin-key` reads it too")
    repository_uri: str = Field("s3://fleet-models/repository", description="s3://bucket/prefix of packs")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (SeaweedFS, MinIO); unset: AWS_ENDPOINT_URL_S3, "
                                        "else AWS's own")
    work_dir: Path = Field(Path(".fleet/control-plane"), description="working folder (uploads are staged below "
                           "it); packs are built straight in S3, so it holds no copy of the repository")
    max_upload_bytes: int = Field(4 * 2**30, description="largest artifact accepted (upload or from-s3), in "
                                  "bytes; the HTTP body limit of Flask and waitress follows from it")
    upload_staging_dir: Path | None = Field(None, description="where uploads and S3 downloads are staged on "
                                            "disk while hashed and validated (default: work_dir/staging); "
                                            "keep it off tmpfs, it holds whole artifacts")
    pack_size: int = Field(1000, description="most members one pack holds (bounds members.json and stub start)")
    pack_max_bytes: int = Field(256 * 2**20, description="a pack's members' artifact bytes stay within this; a "
                                "larger member gets a pack of its own")
    family_pack_max_bytes: int = Field(4 * 2**30, description="a member whose architecture a pack already holds "
                                       "joins it while the pack's bytes stay within this (members of one "
                                       "architecture load by mapping their weights: docs/data-plane.md)")
    split_architectures: bool = Field(True, description="split each artifact at registration into its "
                                      "architecture's program (stored once) and its weights (docs/control-plane.md)")
    split_min_bytes: int = Field(2**20, ge=0, description="artifacts smaller than this are not split (whole-"
                                 "artifact path): splitting added ~80 ms to a tiny model's ~150 ms validation and its "
                                 "load gains nothing (docs/benchmarks-families.md); 0 splits every artifact")
    replicas_min: int = Field(2, ge=1, description="replicas per pack, where that many servers of its family exist")
    replicas_max: int = Field(4, ge=1, description="most replicas a hot pack gets")
    hot_rps_per_replica: float = Field(200.0, gt=0, description="a pack above this rate per replica gets one more")
    cool_rps_per_replica: float = Field(100.0, gt=0, description="a replica is given back only when the rate per "
                                        "replica after removing it stays below this (hysteresis)")
    hot_member_window_s: float = Field(300.0, gt=0, description="members called within this count in a pack's "
                                       "working set")
    reconcile_interval_s: float = Field(1.0, description="seconds between reconcile ticks (a registration or "
                                        "a dead server starts one at once)")
    reconcile_workers: int = Field(8, ge=1, description="syncs, loads and probes run concurrently across servers")
    health_interval_s: float = Field(1.0, gt=0, description="health checks run on their own thread at this cadence")
    server_dead_after_s: float = Field(5.0, gt=0, description="a server that refuses connections (or is not "
                                       "live) for this long is dead: its placements are dropped and re-placed")
    server_slow_dead_after_s: float = Field(30.0, gt=0, description="a server that accepts connections but does "
                                            "not answer liveness in time (busy, or hung) is dead only after this "
                                            "long: on a loaded machine a server loading packs answers late")
    disk_status_interval_s: float = Field(20.0, gt=0, description="how often the sync status servers publish to "
                                          "S3 (.fleet/status/NAME.json) is read as their disk tier: one GET per "
                                          "server; local servers report through the control plane's own sync. At "
                                          "the same cadence, departed servers' assignments and statuses are "
                                          "deleted from S3 (one LIST)")
    stub_probe_interval_s: float = Field(5.0, description="how often each loaded pack's stub is probed; a "
                                         "pack whose stub does not answer is reloaded (0: never)")
    validation_workers: int = Field(2, description="artifacts validated at once, each in its own sandboxed "
                                    "single-use process (as many are kept started ahead)")
    validation_timeout_s: float = Field(120.0, description="wall-clock limit for loading an artifact and "
                                        "running it once in the validator; a hanging artifact is refused")
    validation_cpu_s: int = Field(120, description="CPU-time limit (RLIMIT_CPU) of one validation")
    validation_memory_base_bytes: int = Field(3 * 2**29, description="address-space limit (RLIMIT_AS) of a "
                                              "validator process before the artifact's share (torch itself "
                                              "maps ~0.6 GiB)")
    validation_memory_factor: float = Field(3.0, description="address space a validator may add per byte "
                                            "of artifact: limit = base + factor x artifact bytes")
    public_url: str | None = Field(None, description="how load generators reach this API (set by serve)")
    # ---- several replicas (docs/control-plane.md) ----
    leader_lock_id: int = Field(0x666C656574, description="PostgreSQL advisory lock key the reconciler "
                                "leader holds; replicas sharing a database must agree on it")
    leader_heartbeat_s: float = Field(1.0, gt=0, description="how often the leader checks its lock "
                                      "connection, and how often followers try to take the lock")
    # ---- who may do what ----
    tokens_file: Path | None = Field(None, description="JSON file of scoped tokens, stored as sha256 hashes; "
                                     "re-read when its mtime changes (rotation without a restart)")
    allowed_server_networks: list[str] = Field(["127.0.0.0/8", "::1/128"], description="CIDRs every address "
                                               "of a registered Triton server must be inside (comma-separated)")
    repository_root: Path = Field(Path(".fleet"), description="a server's repository_path must be below this "
                                  "folder (sync deletes what it does not know there); relative to the cwd")
    # ---- load-test bounds ----
    loadtest_max_users: int = Field(1000, ge=1, description="most locust users one load test may ask for")
    loadtest_max_processes: int = Field(4, ge=1, description="most locust worker processes one load test may use")
    loadtest_max_duration_s: int = Field(900, ge=1, description="longest load test, in seconds")
    loadtest_max_concurrent: int = Field(1, ge=1, description="runs pending or running at once, all "
                                         "replicas together; one more is 429")

    @field_validator("allowed_server_networks", mode="before")
    @classmethod
    def _split_networks(cls, value):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as error:
                raise ValueError(f"allowed_server_networks: '{cidr}' is not a CIDR such as 10.0.0.0/16 "
                                 f"({error})") from None
        return value

    @property
    def staging_dir(self) -> Path:
        return self.upload_staging_dir or self.work_dir / "staging"

    @property
    def bucket(self) -> str:
        return self.repository_uri.removeprefix("s3://").split("/", 1)[0]

    @property
    def prefix(self) -> str:
        parts = self.repository_uri.removeprefix("s3://").split("/", 1)
        return parts[1].strip("/") if len(parts) > 1 else ""


class ObservabilitySettings(EnvGroup):
    """The control plane's /metrics, status page and logs."""

    title: ClassVar[str] = "Observability"
    read_by: ClassVar[str] = "the control plane (control_plane/observability)"

    metrics_port: int | None = Field(None, description="serve /metrics without a token on this separate "
                                     "port (keep it internal: cluster network only); unset: /metrics on the "
                                     "API port needs a read token")
    metrics_host: str = Field("0.0.0.0", description="address the internal metrics port binds to")
    log_format: str = Field("json", pattern="^(json|text)$", description="control-plane log lines: json | text")
    status_open_on_loopback: bool = Field(True, description="the status page needs no token for requests from "
                                          "127.0.0.1/::1 (a local stack, kubectl port-forward)")
    status_refresh_s: int = Field(10, ge=0, description="the status page reloads itself this often (0: never)")


class DiscoverySettings(EnvGroup):
    """Servers that join and leave by themselves (EKS pods, ECS tasks)."""

    env_prefix: ClassVar[str] = "FLEET_DISCOVERY_"
    title: ClassVar[str] = "Server discovery"
    read_by: ClassVar[str] = "the control plane's reconciler (control_plane/reconcile/discovery.py)"

    target: Literal["none", "eks", "ecs"] = Field("none", description="where Triton servers come and go")
    capacity_bytes: int = Field(8 * 2**30, ge=64 * 2**20,
                                description="a server's memory when its pod declares no memory limit")
    http_port: int = Field(8000, description="Triton's HTTP port on a discovered server")
    grpc_port: int = Field(8001, description="Triton's gRPC port on a discovered server")
    namespace: str = Field("triton-fleet", description="EKS: the namespace of the Triton pods")
    service_selector: str = Field("app.kubernetes.io/component=inference-server",
                                  description="EKS: label selector of the Triton Services whose pods are servers")
    region: str | None = Field(None, description="ECS: the AWS region (default: the credential chain's)")
    cluster: str | None = Field(None, description="ECS: the cluster the Triton tasks run in")
    target_group_arn: str | None = Field(None, description="ECS: the Triton tasks' target group (gRPC port)")
    interval_s: float = Field(10.0, gt=0, description="the platform's API is asked at most this often (the "
                              "reconciler's tick may be shorter); a leaving server is seen within it")


class EksDeploySettings(EnvGroup):
    """`fleet deploy --target eks` and the control plane's EKS target (control_plane/targets/eks)."""

    env_prefix: ClassVar[str] = "FLEET_EKS_"
    title: ClassVar[str] = "EKS deployments"
    read_by: ClassVar[str] = "`fleet deploy --target eks`, POST /api/v1/deployments (control_plane/targets/eks)"

    namespace: str = Field("triton-fleet", description="the namespace everything is deployed to")
    manifests: Path | None = Field(None, description="a kustomization directory (rendered with kubectl) or a "
                                   "pre-rendered YAML file (default: k8s/overlays/all)")
    registry: str | None = Field(None, description="prefix of the project's images, e.g. "
                                 "111122223333.dkr.ecr.us-east-1.amazonaws.com (unset: the manifests' names)")
    repository_role_arn: str | None = Field(None, description="IAM role (IRSA) that reads the S3 repository "
                                            "(unset: what the manifests say)")
    control_plane_role_arn: str | None = Field(None, description="IAM role (IRSA) of the control plane "
                                               "(unset: what the manifests say)")
    autoscaling: bool = Field(True, description="deploy the HPAs (they need the Prometheus adapter)")
    context: str | None = Field(None, description="the kubeconfig context to use (unset: the current one)")
    control_plane_replicas: int | None = Field(None, description="control-plane replicas (unset: the "
                                               "manifests' 2, on PostgreSQL; 1 may run on SQLite for a trial; "
                                               "`fleet deploy --control-plane-replicas` overrides it)")


class EcsDeploySettings(EnvGroup):
    """`fleet deploy --target ecs` (control_plane/targets/ecs)."""

    env_prefix: ClassVar[str] = "FLEET_ECS_"
    title: ClassVar[str] = "ECS deployments"
    read_by: ClassVar[str] = "`fleet deploy --target ecs`, POST /api/v1/deployments (control_plane/deployments.py)"

    image_registry: str | None = Field(None, description="the ECR registry that holds the triton-fleet/server-cpu "
                                       "and triton-fleet/loadtest images (required for ECS)")
    results_bucket: str | None = Field(None, description="where the locust tasks upload their results (unset: "
                                       "the repository's bucket; docs/ecs.md step 3)")


class SyncSettings(EnvGroup):
    """`fleet sync` on a server (a sidecar or init container): the defaults of its options."""

    env_prefix: ClassVar[str] = "FLEET_SYNC_"
    title: ClassVar[str] = "Sync (each server)"
    read_by: ClassVar[str] = "`fleet sync` (its options' defaults)"

    server: str | None = Field(None, description="sync only this server's assignment (--server)")
    server_from: Literal["ecs-task-metadata"] | None = Field(None, description="derive --server from the ECS "
                                                             "task metadata (--server-from)")
    disk_budget_bytes: int | None = Field(None, ge=0, description="bytes the repository may hold "
                                          "(--disk-budget-bytes; default: free disk less 5%)")
    triton_metrics_url: str | None = Field(None, description="Triton's metrics, so packs that get requests count "
                                           "as recently used (--triton-metrics-url)")


class ClientSettings(EnvGroup):
    """Callers of the control plane: fleet.client, `fleet server`, the locustfiles."""

    title: ClassVar[str] = "Clients"
    read_by: ClassVar[str] = "fleet.client, `fleet server drain/stop`, loadtest/triton_models.py"

    control_plane_url: str | None = Field(None, description="the control plane to call (`fleet server`; "
                                          "default: the one `fleet up` started)")
    api_token: str | None = Field(None, description="the bearer token to send (the control plane's "
                                  "FLEET_API_TOKEN or a scoped token)")


class DevelopmentSettings(EnvGroup):
    """The test suite and the benchmarks."""

    title: ClassVar[str] = "Tests and benchmarks"
    read_by: ClassVar[str] = "tests/, benchmarks/"

    test_databases: list[str] = Field(["sqlite", "postgresql"], description="registry backends the API, race "
                                      "and reliability stacks run on, comma-separated (sqlite narrows a local run)")
    update_screenshot: bool = Field(False, description="tests/observability rewrites docs/img/status-page.png")
    real_size_cache: Path = Field(Path.home() / ".cache" / "triton-fleet" / "real-size",
                                  description="where benchmarks/real_size.py keeps its generated real-size models")
    families_cache: Path = Field(Path.home() / ".cache" / "triton-fleet" / "families",
                                 description="where benchmarks/families.py keeps its generated model families")

    @field_validator("test_databases", mode="before")
    @classmethod
    def _split(cls, value):
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value


class BaselineWorkerSettings(EnvGroup):
    """Internal: what benchmarks/fastapi_baseline.py hands its uvicorn worker processes (never set by hand)."""

    env_prefix: ClassVar[str] = "FLEET_BASELINE_"
    title: ClassVar[str] = "Internal (set by the FastAPI baseline for its workers)"
    read_by: ClassVar[str] = "benchmarks/fastapi_baseline.py's worker processes"

    app: str | None = Field(None, description="the app's arguments as JSON")
    workers: int = Field(1, ge=1, description="uvicorn worker processes")


GROUPS: tuple[type[EnvGroup], ...] = (ControlPlaneSettings, ObservabilitySettings, DiscoverySettings,
                                      EksDeploySettings, EcsDeploySettings, SyncSettings, ClientSettings,
                                      DevelopmentSettings, BaselineWorkerSettings)


def declared() -> dict[str, tuple[type[EnvGroup], str]]:
    """Every declared variable -> (its group, its field). FLEET_API_TOKEN is declared twice on purpose: the
    token the control plane accepts and the one a client sends (first declaration kept here)."""
    names: dict[str, tuple[type[EnvGroup], str]] = {}
    for group in GROUPS:
        for field in group.model_fields:
            names.setdefault(group.env_name(field), (group, field))
    return names
