"""Whether a model is served and, when it should be but is not, why: the one rule the API (`status`,
`endpoints`, `pending_reason`) and the status page and metrics (`fleet_models`, `fleet_models_pending`)
both apply, so the two never disagree about a model.

Pure functions over rows the callers read in bulk (a page of models, or the whole registry for a scrape):
no queries here, so no caller pays one per model.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

PendingCategory = Literal["no_pack", "building", "unplaced", "load_failed", "sync_failed", "loading"]
# The label values of fleet_models_pending{reason=...}, in a fixed order (docs/observability.md).
CATEGORIES: tuple[PendingCategory, ...] = get_args(PendingCategory)


class PackRow(Protocol):
    name: str
    built_generation: int
    pending_reason: str | None  # the placement's words when it found no room (the reconciler sets it)


class PlacementRow(Protocol):
    pack: str
    server: str
    state: str
    loaded_generation: int
    error: str | None
    retiring: bool


class ServerRow(Protocol):
    name: str
    healthy: bool
    last_error: str | None


# Placement errors that mean "the server's copy of the pack is not up to date" (category sync_failed). The
# reconciler writes them with these two functions, so the category never depends on any other wording.
_SYNC_PROBLEM = "sync {kind}, serving the last good version: "
_SYNC_BEHIND = ": its sync is behind"


def sync_problem(kind: Literal["failed", "refused"], detail: str) -> str:
    """The server's sync could not update the pack (S3 unreachable, objects refused): it keeps its copy."""
    return _SYNC_PROBLEM.format(kind=kind) + detail


def sync_behind(served: str | None, expected: int) -> str:
    """The server serves an older generation (or one without any): its sync has not caught up yet."""
    if served is None:
        return f"server's copy has no generation, waiting for {expected}{_SYNC_BEHIND}"
    return f"server has generation {served}, waiting for {expected}{_SYNC_BEHIND}"


def is_sync_problem(error: str | None) -> bool:
    return bool(error) and (error.startswith(tuple(_SYNC_PROBLEM.format(kind=k) for k in ("failed", "refused")))
                            or error.endswith(_SYNC_BEHIND))


@dataclass(frozen=True)
class PendingReason:
    """Why a model that should be servable is not: `category` for counting (a metric label), `text` for
    a person (the API's `pending_reason`, the status page)."""

    category: PendingCategory
    text: str


def serves(placement: PlacementRow, server: ServerRow | None) -> bool:
    """A replica that serves something: on a healthy server, not failed, and read back to serve some
    generation. One waiting for a newer generation still serves the members of the one it serves
    (`loaded_generation`); `serves_generation` says which models that covers."""
    return (server is not None and server.healthy and placement.state != "failed"
            and placement.loaded_generation >= 0)


def serves_generation(placement: PlacementRow, joined_generation: int) -> bool:
    """Whether a serving replica serves a model that joined its pack at `joined_generation`."""
    return placement.loaded_generation >= joined_generation


def pending_reason(joined_generation: int, pack: PackRow | None, placements: Iterable[PlacementRow],
                   servers: Mapping[str, ServerRow]) -> PendingReason:
    """Why a model that joined `pack` at `joined_generation` is not served, from its pack's placements
    (all of them; retiring ones are left out here) and the servers they are on."""
    if pack is None:
        return PendingReason("no_pack", "not in a pack yet")
    if pack.built_generation < joined_generation:
        return PendingReason("building", f"pack {pack.name} is being built (generation {joined_generation}; "
                                         f"built so far: {max(pack.built_generation, 0)})")
    current = sorted((p for p in placements if not p.retiring), key=lambda p: p.server)
    if not current:
        return PendingReason("unplaced", pack.pending_reason or "waiting for the reconciler to place its pack")
    parts, reachable = [], []
    for placement in current:
        server = servers.get(placement.server)
        if server is not None and not server.healthy:
            parts.append(f"{placement.server}: server unhealthy ({server.last_error or 'not answering'})")
            continue
        reachable.append(placement)
        if placement.error:
            parts.append(f"{placement.server}: {placement.error}")
        else:
            parts.append(f"{placement.server}: loading generation {pack.built_generation}")
    return PendingReason(_category(reachable), "; ".join(parts))


def _category(reachable: list[PlacementRow]) -> PendingCategory:
    """The most telling category over the replicas whose servers answer: none answering means the pack
    has nowhere to run (unplaced); a failed load beats a sync problem, which beats plain loading."""
    if not reachable:
        return "unplaced"
    if any(p.state == "failed" for p in reachable):
        return "load_failed"
    if any(is_sync_problem(p.error) for p in reachable):
        return "sync_failed"
    return "loading"
