"""The synthetic bid logs: reproducible, varied like real OpenRTB traffic, labelled by the latent model."""
from __future__ import annotations

import json
import statistics
from collections import Counter

from adfilter.features import CATEGORICAL_FIELDS, featurize
from adfilter.synthetic import generate_bid_requests, generate_labeled, iter_bid_requests

CAT = {name: i for i, (name, _) in enumerate(CATEGORICAL_FIELDS)}


def test_same_seed_gives_identical_requests_and_different_seeds_differ() -> None:
    assert generate_bid_requests(200, seed=4) == generate_bid_requests(200, seed=4)
    assert generate_bid_requests(50, seed=4) != generate_bid_requests(50, seed=5)


def test_streaming_iterator_yields_the_same_requests_as_the_list() -> None:
    stream = iter_bid_requests(seed=8)  # endless
    assert [next(stream) for _ in range(100)] == generate_bid_requests(100, seed=8)


def test_labeled_requests_are_the_plain_requests_plus_label() -> None:
    labeled = generate_labeled(100, seed=2)
    assert [s.request for s in labeled] == generate_bid_requests(100, seed=2)
    for s in labeled:
        assert 0.0 < s.probability < 1.0
        if "ext" in s.request:
            assert s.request["ext"]["ts"] == s.timestamp_ms


def test_traffic_covers_site_app_formats_operating_systems_and_optional_objects() -> None:
    requests = generate_bid_requests(3000, seed=1)
    kinds = Counter("site" if "site" in r else "app" for r in requests)
    formats = Counter(f for r in requests for imp in r["imp"] for f in ("banner", "video", "native") if f in imp)
    uas = " ".join(r.get("device", {}).get("ua", "") for r in requests)
    assert min(kinds.values()) > 600
    assert min(formats.values()) > 100
    for marker in ("iPhone", "iPad", "Android", "Windows NT", "Macintosh"):
        assert marker in uas
    for key in ("device", "user", "regs", "source", "bcat"):
        present = sum(key in r for r in requests)
        assert 0 < present < len(requests), key
    assert 0 < sum("ext" in r for r in requests) < len(requests)  # ext.ts sometimes missing
    assert len({len(r["imp"]) for r in requests}) == 3
    assert any("bidfloor" in imp for r in requests for imp in r["imp"])
    assert len({r["site"]["domain"] for r in requests if "site" in r}) > 200


def test_every_generated_request_is_valid_openrtb_for_the_featurizer() -> None:
    for request in generate_bid_requests(1000, seed=3):
        assert featurize(json.dumps(request)).request_id == request["id"]


def test_labels_follow_the_latent_probability() -> None:
    labeled = generate_labeled(20_000, seed=6)
    bid_rate = statistics.mean(s.bid for s in labeled)
    mean_probability = statistics.mean(s.probability for s in labeled)
    assert 0.1 < bid_rate < 0.35
    assert abs(bid_rate - mean_probability) < 0.01
    likely = [s.bid for s in labeled if s.probability > 0.5]
    unlikely = [s.bid for s in labeled if s.probability < 0.1]
    assert statistics.mean(likely) > 0.5 > 0.1 > statistics.mean(unlikely)


def test_known_effects_show_in_the_labels() -> None:
    """Spot checks of the documented generating process: cookie-synced users and EU consent."""
    labeled = generate_labeled(20_000, seed=7)

    def rate(predicate) -> float:
        return statistics.mean(s.bid for s in labeled if predicate(s.request))

    assert rate(lambda r: "buyeruid" in r.get("user", {})) > rate(lambda r: "buyeruid" not in r.get("user", {}))
    eu = [s for s in labeled if s.request.get("device", {}).get("geo", {}).get("country") in ("DEU", "FRA")]
    with_consent = [s.bid for s in eu if "consent" in json.dumps(s.request.get("user", {}))]
    without = [s.bid for s in eu if "consent" not in json.dumps(s.request.get("user", {}))]
    assert statistics.mean(with_consent) > statistics.mean(without)


def test_bids_follow_the_users_local_clock() -> None:
    """Evening (local 20:00 peak) and weekend effects, read back through the featurizer's local time."""
    evening, morning, weekend, weekday = [], [], [], []
    for s in generate_labeled(20_000, seed=9):
        geo = s.request.get("device", {}).get("geo", {})
        if "utcoffset" not in geo or "ext" not in s.request:
            continue
        features = featurize(json.dumps(s.request))
        hour, day = features.categorical[CAT["hour"]], features.categorical[CAT["weekday"]]
        (evening if 18 <= hour <= 22 else morning if 6 <= hour <= 10 else []).append(s.bid)
        (weekend if day >= 5 else weekday).append(s.bid)
    assert statistics.mean(evening) > statistics.mean(morning) + 0.05
    assert statistics.mean(weekend) > statistics.mean(weekday)
