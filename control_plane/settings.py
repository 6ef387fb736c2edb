"""Control-plane settings, read once from FLEET_* environment variables into a typed object."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import BaseModel, Field


class Settings(BaseModel):
    database_url: str = Field("sqlite:///.fleet/registry.db",
                              description="Any SQLAlchemy URL; SQLite (WAL) by default, PostgreSQL works")
    api_token: str = Field(default_factory=lambda: secrets.token_urlsafe(24),
                           description="Bearer token every /api/v1 call must present")
    triton_admin_key: str | None = Field(None, description="Triton restricted repository-API key")
    repository_uri: str = Field("s3://fleet-models/repository", description="s3://bucket/prefix of packs")
    s3_endpoint_url: str | None = None
    work_dir: Path = Field(Path(".fleet/control-plane"), description="unused: packs are built in S3 (kept so old "
                           "configurations still load)")
    max_upload_bytes: int = 64 * 2**20
    pack_size: int = 100
    reconcile_interval_s: float = 1.0
    server_dead_after_s: float = 5.0
    stub_probe_interval_s: float = Field(5.0, description="how often each loaded pack's stub is probed; a "
                                         "pack whose stub does not answer is reloaded (0: never)")
    validation_workers: int = 2
    public_url: str | None = Field(None, description="how load generators reach this API (set by serve)")

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
