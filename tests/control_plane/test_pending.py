"""Why a model is not servable: one category (the metric label) and one text (the API's pending_reason,
the status page) per situation, from control_plane/pending.py. No database: the rule is a pure function."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from control_plane.pending import CATEGORIES, PendingReason, pending_reason, serves, serves_generation


def pack(name="cpu-0001", built=3, why=None):
    return SimpleNamespace(name=name, built_generation=built, pending_reason=why)


def placement(server, state="pending", loaded=-1, error=None, retiring=False):
    return SimpleNamespace(pack="cpu-0001", server=server, state=state, loaded_generation=loaded, error=error,
                           retiring=retiring)


def server(name, healthy=True, last_error=None):
    return SimpleNamespace(name=name, healthy=healthy, last_error=last_error)


SERVERS = {"a": server("a"), "b": server("b"), "down": server("down", healthy=False, last_error="connection refused"),
           "quiet": server("quiet", healthy=False)}

CASES = {
    "no pack": (3, None, [],
                PendingReason("no_pack", "not in a pack yet")),
    "pack not built to the model's generation": (3, pack(built=2), [],
                                                 PendingReason("building", "pack cpu-0001 is being built "
                                                                           "(generation 3; built so far: 2)")),
    "pack never built": (1, pack(built=-1), [],
                         PendingReason("building", "pack cpu-0001 is being built (generation 1; built so far: 0)")),
    "no replica, the placement's own words": (3, pack(why="no cpu server has 250 MB free; 2 servers, 50 MB free each"),
                                              [], PendingReason("unplaced", "no cpu server has 250 MB free; "
                                                                            "2 servers, 50 MB free each")),
    "no replica yet": (3, pack(), [placement("a", retiring=True)],
                       PendingReason("unplaced", "waiting for the reconciler to place its pack")),
    "every replica on an unhealthy server": (3, pack(), [placement("quiet"), placement("down")],
                                             PendingReason("unplaced", "down: server unhealthy (connection refused); "
                                                                       "quiet: server unhealthy (not answering)")),
    "a failed load": (3, pack(), [placement("b", state="failed", error="load failed (HTTP 400): bad"),
                                  placement("a")],
                      PendingReason("load_failed", "a: loading generation 3; b: load failed (HTTP 400): bad")),
    "a sync behind": (3, pack(), [placement("a", loaded=2,
                                            error="server has generation 2, waiting for 3: its sync is behind")],
                      PendingReason("sync_failed", "a: server has generation 2, waiting for 3: its sync is behind")),
    "loading, one server down": (3, pack(), [placement("a"), placement("down")],
                                 PendingReason("loading", "a: loading generation 3; down: server unhealthy "
                                                          "(connection refused)")),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_each_situation_has_one_category_and_one_text(case):
    joined, the_pack, placements, expected = CASES[case]
    assert pending_reason(joined, the_pack, placements, SERVERS) == expected


def test_every_category_is_a_metric_label_and_each_is_reached():
    assert CATEGORIES == ("no_pack", "building", "unplaced", "load_failed", "sync_failed", "loading")
    assert {expected.category for *_, expected in CASES.values()} == set(CATEGORIES)


def test_a_replica_serves_only_when_read_back_on_a_healthy_server_and_covers_older_joins():
    assert serves(placement("a", state="loaded", loaded=2), SERVERS["a"])
    assert serves(placement("a", state="pending", loaded=2), SERVERS["a"]), "waiting for 3, still serving 2"
    assert not serves(placement("a", state="pending", loaded=-1), SERVERS["a"])
    assert not serves(placement("a", state="failed", loaded=2), SERVERS["a"])
    assert not serves(placement("down", state="loaded", loaded=2), SERVERS["down"])
    assert not serves(placement("gone", state="loaded", loaded=2), None)
    assert serves_generation(placement("a", loaded=2), 2) and not serves_generation(placement("a", loaded=2), 3)
