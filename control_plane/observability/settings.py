"""Observability settings (FLEET_METRICS_PORT, FLEET_LOG_FORMAT, ...), defined in fleet/settings.py with
every other FLEET_* variable."""
from __future__ import annotations

from fleet.settings import ObservabilitySettings

__all__ = ["ObservabilitySettings"]
