"""Placement: plan the assignment (replicas, traffic-weighted working sets; control_plane/placement.py)
and record the difference: new placements `pending`, surplus ones `retiring` (still served)."""
from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from control_plane.db import AuditEntry, Pack, Placement, Server
from control_plane.placement import PackView, PlacementPolicy, ServerView, plan_placement
from control_plane.reconcile.queries import member_bytes, working_sets
from control_plane.settings import Settings
from control_plane.traffic import TrafficMeter


def policy_of(settings: Settings) -> PlacementPolicy:
    return PlacementPolicy(settings.replicas_min, max(settings.replicas_min, settings.replicas_max),
                           settings.hot_rps_per_replica, settings.cool_rps_per_replica)


class Placements:
    name = "placement"

    def __init__(self, sessions: sessionmaker, policy: PlacementPolicy, traffic: TrafficMeter,
                 families: bool = False) -> None:
        self.sessions, self.policy, self.traffic, self.families = sessions, policy, traffic, families

    def update(self) -> None:
        """Record the planned assignment: new placements pending, surplus ones retiring (still served)."""
        with self.sessions.begin() as session:
            servers = list(session.scalars(select(Server)))
            members = member_bytes(session, self.families)
            working = working_sets(members, self.traffic)
            rates = self.traffic.rates()
            packs = {p.name: p for p in session.scalars(select(Pack))}
            views = [PackView(name, pack.family, working[name], rates.get(name, 0.0))
                     for name, pack in packs.items() if pack.built_generation >= 0 and members.get(name)]
            placements = {(p.pack, p.server): p for p in session.scalars(select(Placement))}
            current: dict[str, list[str]] = defaultdict(list)
            for (pack, server), placement in placements.items():
                if not placement.retiring:
                    current[pack].append(server)
            plan = plan_placement(
                [ServerView(s.name, s.family, s.capacity_bytes,
                            "dead" if not s.healthy else "draining" if s.draining else "healthy") for s in servers],
                views, current, self.policy)
            for pack, server in sorted(plan.added(current)):
                placement = placements.get((pack, server))
                if placement is not None:  # a retiring replica wanted again: it is still loaded
                    placement.retiring = False
                else:
                    session.add(Placement(pack=pack, server=server, state="pending",
                                          reserved_bytes=working[pack]))
                session.add(AuditEntry(action="pack.place", subject=pack, detail={"server": server}))
            for pack, server in sorted(plan.removed(current)):
                placements[(pack, server)].retiring = True
                session.add(AuditEntry(action="pack.retire", subject=pack, detail={"server": server}))
            for name, pack in packs.items():
                for server in plan.assignment.get(name, ()):
                    placement = placements.get((name, server))
                    if placement is not None and placement.reserved_bytes != working[name]:
                        placement.reserved_bytes = working[name]
                reason = plan.reasons.get(name)
                if pack.pending_reason != reason:
                    pack.pending_reason = reason
                if name in working and pack.working_set_bytes != working[name]:
                    pack.working_set_bytes = working[name]
                rate = round(rates.get(name, 0.0), 3)
                if pack.request_rate != rate:
                    pack.request_rate = rate
