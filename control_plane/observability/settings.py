"""Observability settings, read from FLEET_* variables like the control plane's own Settings."""
from __future__ import annotations

import os

from pydantic import BaseModel, Field


class ObservabilitySettings(BaseModel):
    metrics_port: int | None = Field(None, description="serve /metrics without a token on this separate "
                                     "port (keep it internal: cluster network only); unset: /metrics on the "
                                     "API port needs a read token")
    metrics_host: str = Field("0.0.0.0", description="address the internal metrics port binds to")
    log_format: str = Field("json", pattern="^(json|text)$", description="control-plane log lines: json | text")
    status_open_on_loopback: bool = Field(True, description="the status page needs no token for requests from "
                                          "127.0.0.1/::1 (a local stack, kubectl port-forward)")
    status_refresh_s: int = Field(10, ge=0, description="the status page reloads itself this often (0: never)")

    @classmethod
    def from_env(cls) -> ObservabilitySettings:
        values = {name: os.environ[f"FLEET_{name.upper()}"] for name in cls.model_fields
                  if f"FLEET_{name.upper()}" in os.environ}
        return cls(**values)
