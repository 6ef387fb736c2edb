"""Runs deployments to a target in the background and records the outcome in the registry."""
from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import sessionmaker

from control_plane.db import AuditEntry, Deployment
from control_plane.settings import Settings
from control_plane.targets.base import DeploymentSpec, TargetError

log = logging.getLogger(__name__)


def make_target(name: str, settings: Settings, control_plane_replicas: int | None = None):
    """The deployment target by name; cloud targets import their SDK clients only when asked for.
    `control_plane_replicas` (EKS) overrides FLEET_EKS_CONTROL_PLANE_REPLICAS."""
    if name == "eks":
        from dataclasses import replace

        from control_plane.targets.eks import EksSettings, EksTarget

        settings_eks = EksSettings.from_env()
        if control_plane_replicas is not None:
            settings_eks = replace(settings_eks, control_plane_replicas=control_plane_replicas)
        return EksTarget(settings_eks)
    if name == "ecs":
        import os

        from control_plane.discovery import DiscoverySettings
        from control_plane.targets.ecs import EcsConfig, EcsTarget

        registry = os.environ.get("FLEET_ECS_IMAGE_REGISTRY")
        if not registry:
            raise TargetError("set FLEET_ECS_IMAGE_REGISTRY to the ECR registry that holds the "
                              "triton-fleet/server-cpu and triton-fleet/loadtest images (docs/ecs.md)")
        # A control plane that discovers the tasks places packs on them: each task syncs only its share.
        scope = "assigned" if DiscoverySettings.from_env().target == "ecs" else "whole"
        return EcsTarget(EcsConfig(image_registry=registry, region=os.environ.get("AWS_REGION"), sync_scope=scope,
                                   results_bucket=os.environ.get("FLEET_ECS_RESULTS_BUCKET") or None))
    return None  # local: servers are started by `fleet up` and registered through /servers


class DeploymentRunner:
    def __init__(self, sessions: sessionmaker, settings: Settings):
        self.sessions, self.settings = sessions, settings

    def start(self, deployment_id: int) -> None:
        threading.Thread(target=self._run, args=(deployment_id,), daemon=True,
                         name=f"deployment-{deployment_id}").start()

    def _run(self, deployment_id: int) -> None:
        with self.sessions() as session:
            deployment = session.get(Deployment, deployment_id)
            spec = dict(deployment.spec)
        status, error = "succeeded", None
        try:
            target = make_target(spec["target"], self.settings)
            if target is not None:
                target.deploy(DeploymentSpec(repository_uri=self.settings.repository_uri,
                                             replicas=spec["replicas"], image_tag=spec["image_tag"],
                                             region=spec.get("region")))
        except (TargetError, ImportError) as problem:
            status, error = "failed", str(problem)
        except Exception as problem:  # noqa: BLE001  recorded for the user; the API stays up
            log.exception("deployment %s failed", deployment_id)
            status, error = "failed", f"{type(problem).__name__}: {problem}"
        with self.sessions.begin() as session:
            deployment = session.get(Deployment, deployment_id)
            deployment.status, deployment.error = status, error
            session.add(AuditEntry(action="deployment." + status, subject=str(deployment_id),
                                   detail={"error": error}))
