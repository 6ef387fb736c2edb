"""Control-plane settings, read once from FLEET_* environment variables into a typed object."""
from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path

from pydantic import BaseModel, Field, field_validator


class Settings(BaseModel):
    database_url: str = Field("sqlite:///.fleet/registry.db",
                              description="Any SQLAlchemy URL; SQLite (WAL) by default, PostgreSQL works")
    api_token: str = Field(default_factory=lambda: secrets.token_urlsafe(24),
                           description="Bearer token every /api/v1 call must present")
    triton_admin_key: str | None = Field(None, description="Triton restricted repository-API key")
    repository_uri: str = Field("s3://fleet-models/repository", description="s3://bucket/prefix of packs")
    s3_endpoint_url: str | None = None
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
    reconcile_interval_s: float = 1.0
    reconcile_workers: int = Field(8, ge=1, description="syncs, loads and probes run concurrently across servers")
    health_interval_s: float = Field(1.0, gt=0, description="health checks run on their own thread at this cadence")
    server_dead_after_s: float = Field(5.0, gt=0, description="a server that refuses connections (or is not "
                                       "live) for this long is dead: its placements are dropped and re-placed")
    server_slow_dead_after_s: float = Field(30.0, gt=0, description="a server that accepts connections but does "
                                            "not answer liveness in time (busy, or hung) is dead only after this "
                                            "long: on a loaded machine a server loading packs answers late")
    disk_status_interval_s: float = Field(20.0, gt=0, description="how often the sync status servers publish to "
                                          "S3 (.fleet/status/NAME.json) is read as their disk tier: one GET per "
                                          "server; local servers report through the control plane's own sync. At the "
                                          "same cadence, departed servers' assignments and statuses are "
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
                                               "of a registered Triton server must be inside (comma-separated "
                                               "in FLEET_ALLOWED_SERVER_NETWORKS)")
    repository_root: Path = Field(Path(".fleet"), description="a server's repository_path must be below this "
                                  "folder (sync deletes what it does not know there); relative to the cwd")
    # ---- load-test bounds ----
    loadtest_max_users: int = Field(1000, ge=1)
    loadtest_max_processes: int = Field(4, ge=1)
    loadtest_max_duration_s: int = Field(900, ge=1)
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

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = {}
        for name in cls.model_fields:
            env = os.environ.get(f"FLEET_{name.upper()}")
            if env is not None:
                values[name] = env
        values.update(overrides)
        if "s3_endpoint_url" not in values and os.environ.get("AWS_ENDPOINT_URL_S3"):
            values["s3_endpoint_url"] = os.environ["AWS_ENDPOINT_URL_S3"]
        return cls(**values)
