"""Registry reads that several reconcile managers need: what each pack should hold, its working set."""
from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.db import Model, ModelVersion
from control_plane.placement import MemberSize, working_set_bytes
from control_plane.traffic import TrafficMeter


def member_bytes(session: Session, families: bool = False) -> dict[str, dict[str, MemberSize]]:
    """pack -> member -> what it holds of the member (one query): its weights for a family member (where
    packs are built with families, `PackSettings.families`), else its whole artifact."""
    rows = session.execute(
        select(Model.pack, Model.name, ModelVersion.bytes, ModelVersion.architecture, ModelVersion.weights_bytes,
               ModelVersion.whole_artifact)
        .join(ModelVersion, (Model.name == ModelVersion.model) & (Model.current_version == ModelVersion.version))
        .where(Model.pack.is_not(None), Model.desired == "loaded"))
    members: dict[str, dict[str, MemberSize]] = defaultdict(dict)
    for pack, name, size, architecture, weights, whole in rows:
        split = architecture and weights is not None and (families or not whole)
        members[pack][name] = MemberSize(int(weights), architecture) if split else MemberSize(int(size))
    return members


def working_sets(members: dict[str, dict[str, MemberSize]], traffic: TrafficMeter) -> dict[str, int]:
    """pack -> the bytes its recently called members (and the rest, discounted) need resident."""
    hot = traffic.hot_members()
    return {pack: working_set_bytes(sizes.values(), [sizes[m] for m in hot.get(pack, ()) if m in sizes])
            for pack, sizes in members.items()}


def one_signature_per_pack(session: Session, packs: set[str]) -> dict[str, list[dict]]:
    """pack -> the input signature of one of its members (what the stub probe sends)."""
    signatures: dict[str, list[dict]] = {}
    if not packs:
        return signatures
    rows = session.execute(
        select(Model.pack, ModelVersion.signature)
        .join(ModelVersion, (Model.name == ModelVersion.model) & (Model.current_version == ModelVersion.version))
        .where(Model.pack.in_(packs)))
    for pack, signature in rows:
        signatures.setdefault(pack, signature["inputs"])
    return signatures
