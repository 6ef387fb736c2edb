"""The control plane's settings: FLEET_* variables read once into a typed object.

Defined in fleet/settings.py with every other FLEET_* variable (one module, rendered into
docs/configuration.md by `fleet config docs`); the control plane imports them from here by name."""
from __future__ import annotations

from fleet.settings import ControlPlaneSettings as Settings

__all__ = ["Settings"]
