"""Brings the fleet to the declared state: the reconciler (`loop.py`) calls one manager per hop, each in a
module named for it (health, stub_probe, builds, traffic, placing, publishing, loading + verify,
retiring, disk_tier, discovery, departures). docs/architecture.md draws the path."""
from __future__ import annotations

from control_plane.reconcile.loop import Reconciler
from control_plane.reconcile.verify import LoadResult, load_and_verify, resize
from control_plane.reconcile.workers import AdminClients, Workers

__all__ = ["AdminClients", "LoadResult", "Reconciler", "Workers", "load_and_verify", "resize"]
