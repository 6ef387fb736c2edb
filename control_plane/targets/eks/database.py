"""The control plane's database on EKS: how many replicas, and whether the database can hold them.

Several control-plane replicas share one registry and elect one reconciler leader with a PostgreSQL
advisory lock (control_plane/leader.py). On SQLite each replica would open its own file on its own
volume: each would keep its own registry, lead its own reconciler and publish its own assignments to the
same S3 prefix. So `deploy` refuses more than one replica unless the `fleet-database` Secret holds a
PostgreSQL URL, and one replica on SQLite (its volume) stays possible for a trial.
"""
from __future__ import annotations

import base64
from typing import Any

from control_plane.targets.base import TargetError

CONTROL_PLANE = "control-plane"
DATABASE_SECRET, DATABASE_KEY = "fleet-database", "url"
SQLITE_TRIAL_URL = "sqlite:////data/fleet.db"  # on the control plane's gp3 volume (statefulset.yaml: /data)


def set_control_plane_replicas(objects: list[dict[str, Any]], wanted: int | None) -> int:
    """Set the control-plane StatefulSet's replicas (None: as the manifests say) and fit its
    PodDisruptionBudget: with one replica, `minAvailable: 1` would block every node drain for good."""
    statefulset = next((o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == CONTROL_PLANE),
                       None)
    if statefulset is None:
        raise TargetError("the manifests have no control-plane StatefulSet (k8s/modules/control-plane): render "
                          "k8s/overlays/all")
    replicas = statefulset["spec"].get("replicas", 1) if wanted is None else wanted
    if replicas < 1:
        raise TargetError(f"control-plane replicas must be at least 1, got {replicas}")
    statefulset["spec"]["replicas"] = replicas
    for obj in objects:
        if obj["kind"] == "PodDisruptionBudget" and obj["metadata"]["name"] == CONTROL_PLANE and replicas == 1:
            obj["spec"].pop("minAvailable", None)
            obj["spec"]["maxUnavailable"] = 1
    return replicas


def secret_url(secret: Any) -> str | None:
    """The `url` of a Secret as the kubernetes client returns it (base64 `data`, or `string_data`)."""
    if secret.data and DATABASE_KEY in secret.data:
        return base64.b64decode(secret.data[DATABASE_KEY]).decode()
    if secret.string_data and DATABASE_KEY in secret.string_data:
        return secret.string_data[DATABASE_KEY]
    return None


def refusal(replicas: int, url: str | None, namespace: str) -> str | None:
    """Why `replicas` control planes cannot run on the database at `url` (None: no Secret), or None."""
    if replicas == 1 or (url or "").startswith("postgresql"):
        return None
    where = (f"there is no {DATABASE_SECRET} Secret in namespace {namespace}, and deploy would create one "
             f"for SQLite" if url is None else f"the {DATABASE_SECRET} Secret's url is "
             f"{url.split('://', 1)[0]}://..., not PostgreSQL")
    return (f"refusing to run {replicas} control-plane replicas: {where}. Replicas share one registry and elect "
            "one reconciler leader only on PostgreSQL; on SQLite each would keep its own registry and publish "
            "its own assignments. Create the database and put its postgresql+psycopg:// URL in the "
            f"{DATABASE_SECRET} Secret (docs/eks.md, step 5b), or, for a trial, run one replica on SQLite: "
            "FLEET_EKS_CONTROL_PLANE_REPLICAS=1 (`fleet deploy --target eks --control-plane-replicas 1`, or "
            "EksSettings(control_plane_replicas=1))")
