"""Where each pack should run: a pure function from (servers, packs, current assignment) to a new one.

Kept free of the database and of HTTP so it can be tested from tables and reasoned about alone; the
reconciler turns the difference between the current and the new assignment into loads and unloads.

Rules, in the order they apply:
- a pack wants `min(replicas_min, servers of its family)` replicas; a hot pack (request rate per replica
  above `hot_rps_per_replica`) wants more, up to `replicas_max`; it gives one back only when the rate
  per replica *after* removing one stays below `cool_rps_per_replica` (hysteresis, so replicas do not
  flap around one threshold);
- small moves beat optimal ones: a replica already on a healthy server stays while it fits (a model that
  moves is a cold model); only the ones that no longer fit (the server's budget shrank, the pack grew)
  are placed again;
- draining and dead servers get nothing: their replicas are placed elsewhere, and the reconciler drops
  the old ones only after the new ones are loaded;
- new replicas go first to the packs that have none, then to second replicas, then to hot extras, each on
  the server of the pack's family with the most bytes free (so new servers fill first);
- every pack that gets fewer replicas than it wants gets a reason a person can act on.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

# A pack stub with torch imported: measured 150-220 MB PSS (NOTES.md); the placement charges each
# replica this much before any member is resident.
STUB_BASE_BYTES = 200 * 2**20
# A resident member costs about twice its file's bytes (tensors plus the TorchScript graph; NOTES.md:
# a 414 MiB member came to 949 MB RSS with two evicted ones).
MEMBER_COST_FACTOR = 2.0
# ...and never less than this: a tiny TorchScript module's resident growth is its graph and allocator
# pages (measured 0.1-4 MB by the pack runtime, which charges what a load really adds).
MEMBER_MIN_COST_BYTES = 2**20

# A family member (architecture families, docs/data-plane.md) maps its weights file instead of loading a
# program: measured, the stub grew by ~1.0x the weights per resident member (BERT-mini, BERT-base:
# docs/benchmarks-families.md); its architecture's program is charged once per pack.
WEIGHTS_COST_FACTOR = 1.05
PROGRAM_COST_BYTES = 32 * 2**20  # a loaded program (TorchScript 6 MiB, torch.export 23 MiB for BERT-mini)

# A pack whose members together are this small keeps them all resident: cheaper than any eviction, and a
# pack of a thousand tiny models with no traffic measured yet would otherwise reload members on every call.
RESIDENT_FLOOR_BYTES = 64 * 2**20

ServerState = Literal["healthy", "draining", "dead"]


@dataclass(frozen=True)
class ServerView:
    name: str
    family: str
    budget_bytes: int  # host memory this server may spend on pack replicas
    state: ServerState = "healthy"


@dataclass(frozen=True)
class PackView:
    name: str
    family: str
    working_set_bytes: int  # what one replica costs (see working_set_bytes)
    request_rate: float = 0.0  # requests per second over all its replicas


@dataclass(frozen=True)
class PlacementPolicy:
    replicas_min: int = 2
    replicas_max: int = 4
    hot_rps_per_replica: float = 200.0
    cool_rps_per_replica: float = 100.0

    def __post_init__(self) -> None:
        if not 1 <= self.replicas_min <= self.replicas_max:
            raise ValueError(f"need 1 <= replicas_min ({self.replicas_min}) <= replicas_max "
                             f"({self.replicas_max}); set FLEET_REPLICAS_MIN / FLEET_REPLICAS_MAX")
        if self.cool_rps_per_replica >= self.hot_rps_per_replica:
            raise ValueError("cool_rps_per_replica must be below hot_rps_per_replica (hysteresis)")


@dataclass
class Plan:
    assignment: dict[str, list[str]]  # pack -> servers, in placement order
    wanted: dict[str, int]  # pack -> replicas it wants
    reasons: dict[str, str] = field(default_factory=dict)  # pack -> why it has fewer replicas than wanted
    free_bytes: dict[str, int] = field(default_factory=dict)  # server -> bytes left after this plan

    def added(self, current: Mapping[str, Iterable[str]]) -> set[tuple[str, str]]:
        now = {(p, s) for p, servers in current.items() for s in servers}
        return {(p, s) for p, servers in self.assignment.items() for s in servers} - now

    def removed(self, current: Mapping[str, Iterable[str]]) -> set[tuple[str, str]]:
        new = {(p, s) for p, servers in self.assignment.items() for s in servers}
        return {(p, s) for p, servers in current.items() for s in servers} - new


@dataclass(frozen=True)
class MemberSize:
    """A member as a pack holds it: a whole artifact (architecture None) or a family member's weights."""

    bytes: int  # the artifact's bytes, or the weights file's for a family member
    architecture: str | None = None


def working_set_bytes(member_bytes: Iterable[int | MemberSize], hot_member_bytes: Iterable[int | MemberSize] = (),
                      stub_base: int = STUB_BASE_BYTES, cost_factor: float = MEMBER_COST_FACTOR) -> int:
    """What one replica of a pack costs: the stub plus the members that traffic keeps resident.

    Members seen in recent traffic count at their real cost; the floor is the largest member (the pack
    must at least hold that one to answer it), or all members when their costs total under
    RESIDENT_FLOOR_BYTES.
    Not the sum of all members: a pack of 100 rarely-called large models is served by its LRU.
    Family members count their weights only; each architecture's program is charged once.
    """
    sizes = list(member_bytes)
    costs = [member_cost(b, cost_factor) for b in sizes]
    if not costs:
        return 0
    hot, total = sum(member_cost(b, cost_factor) for b in hot_member_bytes), sum(costs)
    resident = min(max(hot, max(costs), min(total, RESIDENT_FLOOR_BYTES)), total)
    programs = {b.architecture for b in sizes if isinstance(b, MemberSize) and b.architecture}
    return stub_base + resident + PROGRAM_COST_BYTES * len(programs)


def member_cost(size: int | MemberSize, cost_factor: float = MEMBER_COST_FACTOR) -> int:
    """What a resident member adds to its stub's memory, estimated from its artifact's (or, for a family
    member, its weights') bytes."""
    if isinstance(size, MemberSize):
        if size.architecture:
            return max(int(WEIGHTS_COST_FACTOR * size.bytes), MEMBER_MIN_COST_BYTES)
        size = size.bytes
    return max(int(cost_factor * size), MEMBER_MIN_COST_BYTES)


def residency_budget(reserved_bytes: int) -> int:
    """The pack runtime's `max_resident_bytes` for a replica that reserved this much (0: none reserved).

    The runtime charges each member what its load really adds to the stub's memory, the unit the
    reservation counts members in, so the budget is the reservation less the stub.
    """
    return max(0, reserved_bytes - STUB_BASE_BYTES)


def device_budget(server_device_bytes: int | None, reserved_bytes: int, server_reserved_bytes: int) -> int | None:
    """The pack runtime's `max_device_bytes` for a replica: the server's device memory (capacity.device_bytes)
    split over the replicas placed there in proportion to what each reserved (traffic-weighted working
    sets, as for host RAM), so that the packs together stay within the device. None: no device tier."""
    if not server_device_bytes or reserved_bytes <= 0 or server_reserved_bytes <= 0:
        return None
    return int(server_device_bytes * min(1.0, reserved_bytes / server_reserved_bytes))


def needs_resize(loaded_budget: int, wanted_budget: int) -> bool:
    """Whether a loaded replica's residency budget is far enough from the wanted one to reload it for that
    (a factor of two either way): a reload costs a stub start and cold members, so small drifts wait for
    the pack's next generation."""
    if loaded_budget <= 0 or wanted_budget <= 0:
        return False
    return wanted_budget >= 2 * loaded_budget or loaded_budget >= 2 * wanted_budget


def wanted_replicas(pack: PackView, current: int, family_servers: int, policy: PlacementPolicy) -> int:
    """How many replicas a pack should have, given how many it has now (for hysteresis)."""
    ceiling = min(policy.replicas_max, family_servers)
    floor = min(policy.replicas_min, family_servers)
    want = max(floor, current)
    if pack.request_rate > policy.hot_rps_per_replica * max(current, 1):
        want = math.ceil(pack.request_rate / policy.hot_rps_per_replica)
    while want > floor and pack.request_rate < policy.cool_rps_per_replica * (want - 1):
        want -= 1
    return max(floor, min(want, ceiling))


def _mb(value: int) -> str:
    if abs(value) >= 2**30:
        return f"{value / 2**30:.1f} GiB"
    return f"{value / 2**20:.0f} MB" if abs(value) >= 2**20 else f"{value} B"


def _no_room_reason(pack: PackView, candidates: list[ServerView], free: dict[str, int],
                    placed_on: list[str], wanted: int) -> str:
    family = [s for s in candidates if s.family == pack.family]
    healthy = [s for s in family if s.state == "healthy"]
    if not family:
        return f"no {pack.family} server is registered; add one (POST /api/v1/servers)"
    if not healthy:
        return f"no healthy {pack.family} server: {len(family)} registered, none healthy"
    others = [s for s in healthy if s.name not in placed_on]
    prefix = f"{len(placed_on)} of {wanted} replicas placed; " if placed_on else ""
    if not others:
        return f"{prefix}every healthy {pack.family} server already holds a replica"
    frees = sorted({free[s.name] for s in others})
    each = f"{_mb(frees[0])} free each" if len(frees) == 1 else f"{_mb(frees[0])} to {_mb(frees[-1])} free"
    return (f"{prefix}no {pack.family} server has {_mb(pack.working_set_bytes)} free; {len(others)} "
            f"server{'s' if len(others) != 1 else ''}, {each}")


def plan_placement(servers: Iterable[ServerView], packs: Iterable[PackView],
                   current: Mapping[str, Iterable[str]], policy: PlacementPolicy | None = None) -> Plan:
    """The new assignment; deterministic for the same input (ties broken by name)."""
    policy = policy or PlacementPolicy()
    servers = sorted(servers, key=lambda s: s.name)
    packs = sorted(packs, key=lambda p: p.name)
    usable = {s.name: s for s in servers if s.state == "healthy"}
    free = {s.name: s.budget_bytes for s in usable.values()}
    per_family: dict[str, int] = {}
    for server in usable.values():
        per_family[server.family] = per_family.get(server.family, 0) + 1

    # 1. keep what still fits, in a stable order (packs by name), on healthy servers of the right family
    assignment: dict[str, list[str]] = {p.name: [] for p in packs}
    for pack in packs:
        for server in sorted(set(current.get(pack.name, ()))):
            target = usable.get(server)
            if target is None or target.family != pack.family or free[server] < pack.working_set_bytes:
                continue
            assignment[pack.name].append(server)
            free[server] -= pack.working_set_bytes

    # 2. how many each pack wants; surplus replicas leave the fullest server first
    wanted: dict[str, int] = {}
    for pack in packs:
        have = assignment[pack.name]
        wanted[pack.name] = wanted_replicas(pack, len(have), per_family.get(pack.family, 0), policy)
        while len(have) > wanted[pack.name]:
            fullest = min(have, key=lambda s: (free[s], s))
            have.remove(fullest)
            free[fullest] += pack.working_set_bytes

    # 3. place missing replicas round by round: first replicas first, so availability beats redundancy
    reasons: dict[str, str] = {}
    rounds = max(wanted.values(), default=0)
    for round_number in range(1, rounds + 1):
        # larger packs first within a round: they are the hardest to fit
        for pack in sorted(packs, key=lambda p: (-p.working_set_bytes, p.name)):
            have = assignment[pack.name]
            if wanted[pack.name] < round_number or len(have) >= round_number or pack.name in reasons:
                continue
            fits = [s for s in usable.values() if s.family == pack.family and s.name not in have
                    and free[s.name] >= pack.working_set_bytes]
            if not fits:
                reasons[pack.name] = _no_room_reason(pack, servers, free, have, wanted[pack.name])
                continue
            best = max(fits, key=lambda s: (free[s.name], s.name))
            have.append(best.name)
            free[best.name] -= pack.working_set_bytes
    for pack in packs:
        if pack.name not in reasons and not wanted[pack.name]:
            reasons[pack.name] = _no_room_reason(pack, servers, free, [], 0)
    return Plan(assignment, wanted, reasons, free)


# ---- packs sized by bytes ----------------------------------------------------------------------
@dataclass(frozen=True)
class PackFill:
    name: str
    member_bytes: int  # sum of its members' artifact bytes
    members: int
    same_architecture: int = 0  # its members of the new member's architecture (0: none, or not split)


def choose_pack(candidates: Iterable[PackFill], member_bytes: int, pack_max_bytes: int,
                pack_max_members: int = 1000, family_pack_max_bytes: int | None = None) -> str | None:
    """The pack a new member joins, or None to open a new pack.

    Packs are sized by bytes: a member joins the first pack (by name) whose members' bytes plus its own
    stay within `pack_max_bytes` (and under `pack_max_members`, which bounds a pack's members.json and
    its stub's start time). A member larger than `pack_max_bytes` gets a pack of its own. Call it with
    the candidate packs of the member's kind and family, locked for update.

    Packs group members of one architecture: a member whose architecture a pack already holds joins the
    pack with most such members while it stays within `family_pack_max_bytes` (larger than
    `pack_max_bytes`: such a member loads by mapping its weights, without deserialising code, so big
    members of one architecture can share a stub), before any other pack is considered.
    """
    candidates = sorted(candidates, key=lambda p: p.name)
    if family_pack_max_bytes is not None:
        kin = sorted((p for p in candidates if p.same_architecture > 0), key=lambda p: (-p.same_architecture, p.name))
        for pack in kin:
            if pack.members < pack_max_members and pack.member_bytes + member_bytes <= family_pack_max_bytes:
                return pack.name
    if member_bytes > pack_max_bytes:
        return None
    for pack in candidates:
        if pack.members < pack_max_members and pack.member_bytes + member_bytes <= pack_max_bytes:
            return pack.name
    return None


def member_fits_reason(member_bytes: int, budgets: Mapping[str, int], family: str) -> str | None:
    """Why a member can never be served by any server of its family (None when one can hold it).

    `budgets` maps each registered server of the family to its pack budget. With no server registered
    yet the member is accepted: servers may join later.
    """
    if not budgets:
        return None
    need = working_set_bytes([member_bytes])
    largest = max(budgets.values())
    if need <= largest:
        return None
    return (f"the model needs {_mb(need)} to be served ({_mb(member_bytes)} of artifact at "
            f"{MEMBER_COST_FACTOR:g}x, plus {_mb(STUB_BASE_BYTES)} of runtime) but the largest {family} server "
            f"budget is {_mb(largest)}; add a larger {family} server or shrink the model")
