"""Servers that join and leave by themselves: discovery of Triton pods (EKS) and tasks (ECS).

The reconciler's leader calls `discover(session_factory, settings)` every interval: it asks the platform
which Triton servers are ready and registers or deregisters them in the registry (see base.apply).
"""
from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import sessionmaker

from control_plane.discovery.base import (
    Discovered,
    Discoverer,
    DiscoveryError,
    DiscoveryResult,
    apply,
)
from fleet.settings import DiscoverySettings  # FLEET_DISCOVERY_*, declared with every FLEET_* variable

__all__ = ["Discovered", "Discoverer", "DiscoveryError", "DiscoveryResult", "DiscoverySettings", "apply",
           "discover", "make_discoverer"]


_DISCOVERERS: dict[str, object] = {}


def make_discoverer(settings: DiscoverySettings, platform_factory: Callable[[], object] | None = None):
    """The discoverer for `settings.target`, or None. `platform_factory` makes the platform's client: a
    kubernetes ApiClient (EKS; default: in-cluster config, else kubeconfig) or a boto3 Session (ECS)."""
    if settings.target == "eks":
        from control_plane.discovery.eks import EksDiscoverer

        return EksDiscoverer(platform_factory() if platform_factory else _kubernetes_api(), settings)
    if settings.target == "ecs":
        import boto3

        from control_plane.discovery.ecs import EcsDiscoverer

        return EcsDiscoverer(platform_factory() if platform_factory else boto3.Session(), settings)
    return None


def _kubernetes_api():
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def discover(session_factory: sessionmaker, settings=None, discovery: DiscoverySettings | None = None,
             platform_factory: Callable[[], object] | None = None) -> DiscoveryResult | None:
    """One discovery round; None when discovery is off (FLEET_DISCOVERY_TARGET unset or "none").

    `settings` (the control plane's) is accepted so the reconciler has one call; discovery's own knobs come
    from `discovery` or FLEET_DISCOVERY_*. Raises DiscoveryError (nothing changed) when the platform
    cannot be asked: a transient API failure must never deregister every server.
    """
    discovery = discovery or DiscoverySettings.from_env()
    if discovery.target == "none":
        return None
    if platform_factory is None:  # one platform client per configuration, reused every interval
        key = discovery.model_dump_json()
        if key not in _DISCOVERERS:
            _DISCOVERERS[key] = make_discoverer(discovery)
        discoverer = _DISCOVERERS[key]
    else:
        discoverer = make_discoverer(discovery, platform_factory)
    return apply(session_factory, discoverer.list_servers(), discoverer.prefix)
