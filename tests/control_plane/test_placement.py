"""Placement as a pure function: tables of servers, packs and current assignments, no server needed."""
from __future__ import annotations

import pytest

from control_plane.placement import (
    MEMBER_MIN_COST_BYTES,
    PROGRAM_COST_BYTES,
    RESIDENT_FLOOR_BYTES,
    STUB_BASE_BYTES,
    WEIGHTS_COST_FACTOR,
    MemberSize,
    PackFill,
    PackView,
    PlacementPolicy,
    ServerView,
    choose_pack,
    member_fits_reason,
    needs_resize,
    plan_placement,
    wanted_replicas,
    working_set_bytes,
)

MB = 2**20
GB = 2**30


def servers(*specs: str, budget: int = 4 * GB, family: str = "cpu") -> list[ServerView]:
    """'a' -> healthy server a; 'b:draining' -> draining server b."""
    out = []
    for spec in specs:
        name, _, state = spec.partition(":")
        out.append(ServerView(name, family, budget, state or "healthy"))
    return out


def packs(count: int, size: int = 300 * MB, family: str = "cpu", rate: float = 0.0) -> list[PackView]:
    return [PackView(f"p{k:02d}", family, size, rate) for k in range(count)]


def test_every_pack_gets_two_replicas_on_distinct_servers():
    plan = plan_placement(servers("a", "b", "c"), packs(6), {})
    assert all(len(set(s)) == 2 for s in plan.assignment.values())
    assert plan.reasons == {}
    # spread: 12 replicas over 3 servers, 4 each
    load = {s: sum(s in v for v in plan.assignment.values()) for s in "abc"}
    assert load == {"a": 4, "b": 4, "c": 4}


@pytest.mark.parametrize("server_count, replicas_min, expected", [
    (1, 2, 1),  # only one server of the family: one replica, and that is not a shortfall
    (2, 2, 2),
    (5, 2, 2),
    (5, 3, 3),
])
def test_replicas_are_min_of_setting_and_family_servers(server_count, replicas_min, expected):
    names = [chr(ord("a") + k) for k in range(server_count)]
    plan = plan_placement(servers(*names), packs(1), {}, PlacementPolicy(replicas_min=replicas_min,
                                                                          replicas_max=4))
    assert len(plan.assignment["p00"]) == expected
    assert plan.reasons == {}


def test_families_never_mix():
    fleet = servers("c1", "c2") + servers("g1", family="gpu")
    plan = plan_placement(fleet, packs(2) + [PackView("gp", "gpu", 100 * MB)], {})
    assert plan.assignment["gp"] == ["g1"]
    assert all(s.startswith("c") for p in ("p00", "p01") for s in plan.assignment[p])


def test_placed_replicas_that_still_fit_never_move():
    current = {"p00": ["a", "b"], "p01": ["a", "b"]}
    plan = plan_placement(servers("a", "b", "c", "d"), packs(2), current)
    assert plan.assignment == {"p00": ["a", "b"], "p01": ["a", "b"]}
    assert plan.added(current) == set() and plan.removed(current) == set()


def test_a_new_server_is_filled_from_new_replicas_first():
    current = {"p00": ["a", "b"], "p01": ["a", "b"]}
    plan = plan_placement(servers("a", "b", "c"), packs(3), current)
    assert plan.assignment["p00"] == ["a", "b"] and plan.assignment["p01"] == ["a", "b"]
    assert "c" in plan.assignment["p02"]  # the empty server has the most room


def test_a_draining_server_gets_replicas_placed_elsewhere():
    current = {"p00": ["a", "b"], "p01": ["b", "c"]}
    plan = plan_placement(servers("a", "b:draining", "c", "d"), packs(2), current)
    assert "b" not in plan.assignment["p00"] and "b" not in plan.assignment["p01"]
    assert len(plan.assignment["p00"]) == 2 and len(plan.assignment["p01"]) == 2
    assert plan.removed(current) == {("p00", "b"), ("p01", "b")}
    # the replicas on healthy servers stayed where they were
    assert "a" in plan.assignment["p00"] and "c" in plan.assignment["p01"]


def test_dead_servers_are_ignored_and_their_packs_replaced():
    current = {"p00": ["a", "b"]}
    plan = plan_placement(servers("a", "b:dead", "c"), packs(1), current)
    assert sorted(plan.assignment["p00"]) == ["a", "c"]


def test_replicas_that_no_longer_fit_move_and_the_rest_stay():
    # the server's budget shrank to room for one pack: the first (by name) stays, the second moves
    current = {"p00": ["a"], "p01": ["a"]}
    fleet = [ServerView("a", "cpu", 400 * MB), ServerView("b", "cpu", 4 * GB)]
    plan = plan_placement(fleet, packs(2), current, PlacementPolicy(replicas_min=1, replicas_max=2))
    assert plan.assignment == {"p00": ["a"], "p01": ["b"]}


def test_unplaced_pack_says_why_with_free_bytes():
    plan = plan_placement(servers("a", "b", budget=300 * MB), packs(2, size=250 * MB), {},
                          PlacementPolicy(replicas_min=1, replicas_max=2))
    assert plan.assignment["p00"] and plan.assignment["p01"]  # one each
    plan = plan_placement(servers("a", "b", budget=300 * MB), packs(3, size=250 * MB), {},
                          PlacementPolicy(replicas_min=1, replicas_max=2))
    unplaced = [p for p, s in plan.assignment.items() if not s]
    assert len(unplaced) == 1
    assert plan.reasons[unplaced[0]] == "no cpu server has 250 MB free; 2 servers, 50 MB free each"


def test_missing_second_replica_is_reported_but_first_replicas_win():
    # room for three replicas: both packs get their first one before any gets a second
    plan = plan_placement(servers("a", "b", budget=600 * MB), packs(2, size=400 * MB), {})
    assert [len(s) for s in plan.assignment.values()] == [1, 1]
    assert plan.reasons["p00"].startswith("1 of 2 replicas placed; no cpu server has 400 MB free")


@pytest.mark.parametrize("fleet, reason", [
    ([], "no cpu server is registered; add one (POST /api/v1/servers)"),
    (servers("a:dead", "b:draining"), "no healthy cpu server: 2 registered, none healthy"),
])
def test_no_server_reasons(fleet, reason):
    plan = plan_placement(fleet, packs(1), {})
    assert plan.assignment["p00"] == [] and plan.reasons["p00"] == reason


def test_hot_packs_get_more_replicas_and_give_them_back_with_hysteresis():
    policy = PlacementPolicy(replicas_min=2, replicas_max=4, hot_rps_per_replica=100, cool_rps_per_replica=50)
    fleet = servers("a", "b", "c", "d", "e")
    hot = [PackView("p00", "cpu", 300 * MB, request_rate=350.0)]
    plan = plan_placement(fleet, hot, {"p00": ["a", "b"]}, policy)
    assert len(plan.assignment["p00"]) == 4  # ceil(350 / 100), capped by replicas_max
    assert plan.assignment["p00"][:2] == ["a", "b"]
    current = {"p00": plan.assignment["p00"]}
    # 120 rps over 4 replicas is 30 each, but it stays at 3 until 3 -> 2 would be below 50 each
    assert len(plan_placement(fleet, [PackView("p00", "cpu", 300 * MB, 120.0)], current,
                              policy).assignment["p00"]) == 3
    assert len(plan_placement(fleet, [PackView("p00", "cpu", 300 * MB, 40.0)], current,
                              policy).assignment["p00"]) == 2


@pytest.mark.parametrize("rate, current, expected", [
    (0, 2, 2), (150, 2, 2), (250, 2, 3), (250, 3, 3), (190, 3, 3), (90, 3, 2), (10_000, 2, 4),
])
def test_wanted_replicas_table(rate, current, expected):
    policy = PlacementPolicy(replicas_min=2, replicas_max=4, hot_rps_per_replica=100, cool_rps_per_replica=50)
    assert wanted_replicas(PackView("p", "cpu", 1, rate), current, 5, policy) == expected


def test_surplus_replicas_leave_the_fullest_server():
    fleet = [ServerView("a", "cpu", 1 * GB), ServerView("b", "cpu", 4 * GB), ServerView("c", "cpu", 4 * GB)]
    plan = plan_placement(fleet, packs(1), {"p00": ["a", "b", "c"]})
    assert plan.assignment["p00"] == ["b", "c"]


def test_working_set_is_traffic_weighted_not_the_sum_of_all_members():
    members = [10 * MB] * 99 + [100 * MB]
    # no traffic yet: the largest member is the floor
    assert working_set_bytes(members) == STUB_BASE_BYTES + 2 * 100 * MB
    # twelve members seen in traffic
    assert working_set_bytes(members, [10 * MB] * 12) == STUB_BASE_BYTES + 2 * 120 * MB
    # small packs keep every member resident (up to RESIDENT_FLOOR_BYTES), traffic or not
    assert working_set_bytes([3 * MB] * 10) == STUB_BASE_BYTES + 2 * 30 * MB
    assert working_set_bytes([MB] * 1000) == STUB_BASE_BYTES + RESIDENT_FLOOR_BYTES
    # a tiny member costs at least MEMBER_MIN_COST_BYTES (its graph and allocator pages), not 2x its 7 KB
    assert working_set_bytes([7_000] * 10) == STUB_BASE_BYTES + 10 * MEMBER_MIN_COST_BYTES
    # traffic can never claim more than the pack holds
    assert working_set_bytes([MB, MB], [MB] * 10) == STUB_BASE_BYTES + 2 * 2 * MB
    assert working_set_bytes([]) == 0


def test_plan_is_deterministic():
    args = (servers("a", "b", "c"), packs(20), {"p03": ["c"]})
    assert plan_placement(*args).assignment == plan_placement(*args).assignment


@pytest.mark.parametrize("fills, size, expected", [
    ([], 10 * MB, None),
    ([PackFill("k-0000", 90 * MB, 9)], 10 * MB, "k-0000"),
    ([PackFill("k-0000", 95 * MB, 9)], 10 * MB, None),
    ([PackFill("k-0001", 10 * MB, 1), PackFill("k-0000", 95 * MB, 9)], 5 * MB, "k-0000"),
    ([PackFill("k-0000", 0, 0)], 101 * MB, None),  # larger than a pack: a pack of its own
    ([PackFill("k-0000", 1 * MB, 1000)], 1 * MB, None),  # member count bound
])
def test_choose_pack_sizes_packs_by_bytes(fills, size, expected):
    assert choose_pack(fills, size, pack_max_bytes=100 * MB) == expected


@pytest.mark.parametrize("fills, size, expected", [
    # a member joins the pack holding most of its architecture, even past pack_max_bytes (family packs) ...
    ([PackFill("k-0000", 10 * MB, 2), PackFill("k-0001", 300 * MB, 3, same_architecture=3)], 200 * MB, "k-0001"),
    ([PackFill("k-0000", 50 * MB, 2, 1), PackFill("k-0001", 50 * MB, 5, 4)], 5 * MB, "k-0001"),
    # ... within family_pack_max_bytes, then like any member: a pack with room, or a new one
    ([PackFill("k-0000", 10 * MB, 2), PackFill("k-0001", 990 * MB, 3, 3)], 20 * MB, "k-0000"),
    ([PackFill("k-0001", 990 * MB, 3, 3)], 200 * MB, None),
    ([PackFill("k-0000", 10 * MB, 2)], 20 * MB, "k-0000"),  # no pack holds its architecture yet
])
def test_members_of_one_architecture_are_grouped_in_a_pack(fills, size, expected):
    assert choose_pack(fills, size, pack_max_bytes=100 * MB, family_pack_max_bytes=1000 * MB) == expected


def test_a_family_member_costs_its_weights_and_each_architecture_its_program_once():
    family = [MemberSize(100 * MB, "arch-a")] * 3 + [MemberSize(100 * MB, "arch-b")]
    # mapped weights cost ~1x (not 2x like a whole artifact); two programs are charged once each
    assert working_set_bytes(family, family) == STUB_BASE_BYTES + 4 * int(
        WEIGHTS_COST_FACTOR * 100 * MB) + 2 * PROGRAM_COST_BYTES
    whole = [MemberSize(100 * MB)] * 4
    assert working_set_bytes(whole, whole) == STUB_BASE_BYTES + 4 * 2 * 100 * MB
    assert working_set_bytes(whole, whole) == working_set_bytes([100 * MB] * 4, [100 * MB] * 4)


def test_member_larger_than_every_budget_is_refused_with_the_reason():
    assert member_fits_reason(10 * MB, {"a": 1 * GB}, "cpu") is None
    assert member_fits_reason(10 * GB, {}, "cpu") is None
    reason = member_fits_reason(600 * MB, {"a": 1 * GB, "b": 512 * MB}, "cpu")
    assert reason.startswith("the model needs 1.4 GiB to be served") and "largest cpu server budget is 1.0 GiB" \
        in reason


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="replicas_min"):
        PlacementPolicy(replicas_min=3, replicas_max=2)
    with pytest.raises(ValueError, match="hysteresis"):
        PlacementPolicy(hot_rps_per_replica=10, cool_rps_per_replica=10)


@pytest.mark.parametrize("loaded, wanted, resize", [
    (100, 100, False), (100, 190, False), (100, 200, True), (100, 50, True), (100, 60, False), (0, 100, False),
])
def test_a_loaded_budget_is_reloaded_only_when_far_from_the_wanted_one(loaded, wanted, resize):
    assert needs_resize(loaded, wanted) is resize
