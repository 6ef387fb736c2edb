"""Feature extraction: tolerant of absent optional fields, strict about what is not OpenRTB."""
from __future__ import annotations

import copy
import json
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adfilter.features import (
    CATEGORICAL_FIELDS,
    MAX_REQUEST_BYTES,
    NUMERIC_FIELDS,
    OS_NAMES,
    BidRequestError,
    Features,
    featurize,
    os_and_type_from_ua,
    try_featurize,
)
from adfilter.synthetic import generate_bid_requests

CAT = {name: i for i, (name, _) in enumerate(CATEGORICAL_FIELDS)}
NUM = {name: i for i, name in enumerate(NUMERIC_FIELDS)}
MINIMAL = {"id": "r1", "imp": [{"id": "1"}]}
TUESDAY_NOON_UTC_MS = 1_717_502_400_000  # 2024-06-04T12:00:00Z


def features_of(request: dict, arrival_s: float = 0.0) -> Features:
    return featurize(json.dumps(request).encode(), arrival_s)


def with_imp(**fields) -> dict:
    return {"id": "r1", "imp": [{"id": "1", **fields}]}


def assert_well_formed(features: Features) -> None:
    assert len(features.categorical) == len(CATEGORICAL_FIELDS)
    assert len(features.numeric) == len(NUMERIC_FIELDS)
    for value, (name, cardinality) in zip(features.categorical, CATEGORICAL_FIELDS, strict=True):
        assert 0 <= value < cardinality, name
    assert all(math.isfinite(v) for v in features.numeric)


def test_generated_requests_give_fixed_size_in_range_vectors(request_lines: list[bytes]) -> None:
    for line in request_lines:
        assert_well_formed(featurize(line))


def test_bytes_and_text_inputs_are_equivalent(request_lines: list[bytes]) -> None:
    assert featurize(request_lines[0], 5.0) == featurize(request_lines[0].decode(), 5.0)


def test_minimal_request_scores_with_every_presence_flag_off() -> None:
    features = features_of(MINIMAL)
    assert_well_formed(features)
    for name in ("is_app", "is_site", "has_device", "has_geo", "has_user", "has_regs", "has_source",
                 "has_floor", "has_timestamp", "has_tmax"):
        assert features.numeric[NUM[name]] == 0.0, name
    for name in ("inventory", "publisher", "country", "os", "devicetype", "format", "size"):
        assert features.categorical[CAT[name]] == 0, name


def test_nulls_everywhere_read_as_absent() -> None:
    nulls = {"id": "r1", "imp": [{"id": "1", "banner": None, "video": None, "native": None, "bidfloor": None,
                                  "secure": None, "instl": None}],
             "site": None, "app": None, "device": {"ua": None, "geo": None, "os": None, "ifa": None},
             "user": {"id": None, "ext": None}, "regs": {"gdpr": None, "ext": None},
             "source": {"schain": None, "ext": None}, "ext": {"ts": None}, "tmax": None, "bcat": None}
    features = features_of(nulls)
    assert_well_formed(features)
    assert features.numeric[NUM["has_device"]] == 1.0
    assert features.numeric[NUM["has_ua"]] == 0.0
    assert features.numeric[NUM["has_timestamp"]] == 0.0


@pytest.mark.parametrize(("raw", "message"), [
    (b"{}", "missing required field 'id'"),
    (b'{"id": "r1"}', "missing required field 'imp'"),
    (b'{"id": "r1", "imp": {"id": "1"}}', "imp must be an array, got object"),
    (b'{"id": "r1", "imp": null}', "imp must be an array, got null"),
    (b'{"id": "r1", "imp": []}', "imp must contain at least one impression"),
    (b'{"id": "r1", "imp": [7]}', "imp[0] must be an object, got integer"),
    (b'{"id": "r1", "imp": [{"banner": {}}]}', "missing required field 'imp[0].id'"),
    (b'{"id": "r1", "imp": [{"id": 1}]}', "imp[0].id must be a string, got integer"),
    (b'{"id": 42, "imp": [{"id": "1"}]}', "id must be a string, got integer"),
    (b'{"id": null, "imp": [{"id": "1"}]}', "id must be a string, got null"),
    (b'{"id": "", "imp": [{"id": "1"}]}', "id must not be empty"),
    (b'[{"id": "r1"}]', "bid request must be a JSON object, got array"),
    (b'"hello"', "bid request must be a JSON object, got string"),
    (b"null", "bid request must be a JSON object, got null"),
    (b"{not json", "request is not valid JSON"),
    (b"", "request is not valid JSON"),
    (b'{"id": "r\xff\xfe", "imp": []}', "request is not valid UTF-8"),
    (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
    (b'{"id": "r1", "imp": [{"id": "1", "bidfloor": ' + b"9" * 5000 + b"}]}", "request is not valid JSON"),
])
def test_requests_that_are_not_openrtb_are_rejected_with_the_reason(raw: bytes, message: str) -> None:
    with pytest.raises(BidRequestError, match=re.escape(message)):
        featurize(raw)


@pytest.mark.parametrize(("request_", "message"), [
    (with_imp(banner={"w": "300", "h": 250}), "imp[0].banner.w must be an integer, got string"),
    (with_imp(banner={"w": 300.0, "h": 250}), "imp[0].banner.w must be an integer, got number"),
    (with_imp(banner={"w": True, "h": 250}), "imp[0].banner.w must be an integer, got boolean"),
    (with_imp(banner={"w": -1, "h": 250}), "imp[0].banner.w must be non-negative, got -1"),
    (with_imp(banner={"format": [{"w": 300, "h": "x"}]}), "imp[0].banner.format[0].h must be an integer"),
    (with_imp(banner={"format": {"w": 300}}), "imp[0].banner.format must be an array, got object"),
    (with_imp(banner=[300, 250]), "imp[0].banner must be an object, got array"),
    (with_imp(video={"maxduration": "30"}), "imp[0].video.maxduration must be an integer"),
    (with_imp(bidfloor="0.5"), "imp[0].bidfloor must be a number, got string"),
    (with_imp(bidfloor=-0.5), "imp[0].bidfloor must be a finite non-negative number, got -0.5"),
    (with_imp(secure=2), "imp[0].secure must be 0 or 1, got 2"),
    ({"id": "r1", "imp": [{"id": "1"}, {"id": "2", "bidfloor": []}]}, "imp[1].bidfloor must be a number"),
    ({**MINIMAL, "site": {"domain": "a.com"}, "app": {"bundle": "b"}}, "must not contain both site and app"),
    ({**MINIMAL, "site": {"domain": 5}}, "site.domain must be a string, got integer"),
    ({**MINIMAL, "app": {"publisher": {"id": 123}}}, "app.publisher.id must be a string, got integer"),
    ({**MINIMAL, "device": "iPhone"}, "device must be an object, got string"),
    ({**MINIMAL, "device": {"devicetype": "4"}}, "device.devicetype must be an integer, got string"),
    ({**MINIMAL, "device": {"geo": {"utcoffset": 5000}}}, "device.geo.utcoffset must be between"),
    ({**MINIMAL, "user": {"geo": {"country": ["USA"]}}}, "user.geo.country must be a string, got array"),
    ({**MINIMAL, "regs": {"ext": {"gdpr": "1"}}}, "regs.ext.gdpr must be an integer, got string"),
    ({**MINIMAL, "source": {"ext": {"schain": {"nodes": {}}}}}, "source.ext.schain.nodes must be an array"),
    ({**MINIMAL, "ext": {"ts": "2024-06-04"}}, "ext.ts must be a number, got string"),
    ({**MINIMAL, "tmax": 300.5}, "tmax must be an integer, got number"),
    ({**MINIMAL, "bcat": "IAB1"}, "bcat must be an array, got string"),
])
def test_wrong_types_in_fields_we_read_are_named_in_the_error(request_: dict, message: str) -> None:
    with pytest.raises(BidRequestError) as caught:
        features_of(request_)
    assert message in str(caught.value)
    assert caught.value.request_id == "r1"  # the error keeps the id so responses can be matched


def test_non_finite_numbers_are_rejected() -> None:
    with pytest.raises(BidRequestError, match="finite"):
        featurize(b'{"id": "r1", "imp": [{"id": "1", "bidfloor": NaN}]}')
    with pytest.raises(BidRequestError, match="finite"):
        featurize(b'{"id": "r1", "imp": [{"id": "1"}], "ext": {"ts": Infinity}}')


def test_input_over_the_byte_limit_is_rejected_before_parsing() -> None:
    padding = "x" * MAX_REQUEST_BYTES
    with pytest.raises(BidRequestError, match=f"more than the limit of {MAX_REQUEST_BYTES}"):
        featurize(json.dumps({**MINIMAL, "device": {"ua": padding}}))


def test_the_limit_counts_utf8_bytes_for_text_input_too() -> None:
    request = json.dumps({**MINIMAL, "device": {"ua": "€" * (MAX_REQUEST_BYTES // 3)}}, ensure_ascii=False)
    assert len(request) < MAX_REQUEST_BYTES < len(request.encode())
    with pytest.raises(BidRequestError, match="more than the limit"):
        featurize(request)


def test_huge_strings_within_the_limit_are_accepted() -> None:
    request = {**MINIMAL, "device": {"ua": "A" * 60_000}, "site": {"domain": "d" * 1000}}
    assert_well_formed(features_of(request))


@pytest.mark.parametrize("text", ["例え.jp", "\U0001F600.example", "\ud800lone-surrogate.com", "", "\x00"])
def test_unicode_in_strings_is_hashed_not_rejected(text: str) -> None:
    request = {**MINIMAL, "site": {"domain": text, "publisher": {"id": text}},
               "device": {"ua": text, "os": text, "geo": {"country": text, "region": text}}}
    assert_well_formed(features_of(request))


def test_unknown_enum_values_map_to_unknown_for_forward_compatibility() -> None:
    features = features_of({**MINIMAL, "device": {"devicetype": 99, "connectiontype": -3}})
    assert features.categorical[CAT["devicetype"]] == 0
    assert features.categorical[CAT["connectiontype"]] == 0


@pytest.mark.parametrize(("ua", "os_name", "devicetype"), [
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15", "ios", 4),
    ("Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15", "ios", 5),
    ("Quiz/3.1 (iPhone; iOS 17.2; Scale/3.00)", "ios", 4),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/120.0.0.0 Mobile Safari/537.36",
     "android", 4),
    ("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 Chrome/120.0.0.0 Safari/537.36",
     "android", 5),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0.0.0 Safari/537.36",
     "windows", 2),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Version/17.1 Safari/605.1.15",
     "macos", 2),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0.0.0 Safari/537.36", "linux", 2),
    ("curl/8.4.0", "other", 0),
])
def test_os_and_device_type_are_parsed_from_the_user_agent(ua: str, os_name: str, devicetype: int) -> None:
    assert os_and_type_from_ua(ua) == (OS_NAMES.index(os_name), devicetype)
    features = features_of({**MINIMAL, "device": {"ua": ua}})
    assert features.categorical[CAT["os"]] == OS_NAMES.index(os_name)
    assert features.categorical[CAT["devicetype"]] == devicetype


def test_device_fields_win_over_the_user_agent() -> None:
    """iPadOS Safari sends a macOS user agent; device.os and device.devicetype say what it is."""
    ua = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 Version/17.1 Safari/605.1.15"
    features = features_of({**MINIMAL, "device": {"ua": ua, "os": "iOS", "devicetype": 5}})
    assert features.categorical[CAT["os"]] == OS_NAMES.index("ios")
    assert features.categorical[CAT["devicetype"]] == 5


def test_time_features_come_from_ext_ts_in_milliseconds_or_seconds() -> None:
    in_ms = features_of({**MINIMAL, "ext": {"ts": TUESDAY_NOON_UTC_MS}}, arrival_s=0.0)
    in_s = features_of({**MINIMAL, "ext": {"ts": TUESDAY_NOON_UTC_MS / 1000}}, arrival_s=0.0)
    assert in_ms == in_s
    assert in_ms.categorical[CAT["hour"]] == 12
    assert in_ms.categorical[CAT["weekday"]] == 1  # Monday = 0
    assert in_ms.numeric[NUM["has_timestamp"]] == 1.0


def test_without_ext_ts_the_arrival_time_is_used() -> None:
    features = features_of(MINIMAL, arrival_s=TUESDAY_NOON_UTC_MS / 1000 + 3 * 3600)
    assert features.categorical[CAT["hour"]] == 15
    assert features.numeric[NUM["has_timestamp"]] == 0.0


def test_geo_utcoffset_shifts_time_to_the_users_local_clock() -> None:
    request = {**MINIMAL, "ext": {"ts": TUESDAY_NOON_UTC_MS},
               "device": {"geo": {"country": "JPN", "utcoffset": 540}}}
    features = features_of(request)
    assert features.categorical[CAT["hour"]] == 21
    assert features.numeric[NUM["has_utcoffset"]] == 1.0


def test_openrtb_25_ext_and_26_fields_give_the_same_features() -> None:
    schain = {"complete": 1, "nodes": [{"asi": "a"}, {"asi": "b"}]}
    v26 = {**MINIMAL, "regs": {"gdpr": 1, "us_privacy": "1YNN"}, "user": {"consent": "CP"},
           "source": {"schain": schain}}
    v25 = {**MINIMAL, "regs": {"ext": {"gdpr": 1, "us_privacy": "1YNN"}}, "user": {"ext": {"consent": "CP"}},
           "source": {"ext": {"schain": schain}}}
    assert features_of(v26) == features_of(v25)
    numeric = features_of(v26).numeric
    assert numeric[NUM["gdpr"]] == numeric[NUM["has_consent"]] == numeric[NUM["has_us_privacy"]] == 1.0
    assert numeric[NUM["schain_hops"]] == pytest.approx(2 / 5)


def test_impression_formats_sizes_and_floors_are_summarised() -> None:
    request = {"id": "r1", "imp": [
        {"id": "1", "banner": {"format": [{"w": 300, "h": 250}, {"w": 320, "h": 50}]}, "bidfloor": 0.5,
         "secure": 1},
        {"id": "2", "video": {"w": 640, "h": 480, "maxduration": 30}, "bidfloor": 3.0},
    ]}
    features = features_of(request)
    same_size = features_of(with_imp(banner={"w": 300, "h": 250}))
    assert features.categorical[CAT["format"]] == 1
    assert features.categorical[CAT["size"]] == same_size.categorical[CAT["size"]] != 0
    assert features.numeric[NUM["floor_log"]] == pytest.approx(math.log1p(0.5))
    assert features.numeric[NUM["floor_max_log"]] == pytest.approx(math.log1p(3.0))
    assert features.numeric[NUM["banner_share"]] == features.numeric[NUM["video_share"]] == 0.5
    assert features.numeric[NUM["secure"]] == 1.0


def test_site_without_domain_falls_back_to_the_page_host() -> None:
    by_page = features_of({**MINIMAL, "site": {"page": "https://news.example.com/a/b?c=d"}})
    by_domain = features_of({**MINIMAL, "site": {"domain": "NEWS.example.com"}})
    assert by_page.categorical[CAT["inventory"]] == by_domain.categorical[CAT["inventory"]] != 0


def test_site_and_app_with_the_same_name_do_not_share_a_bucket() -> None:
    site = features_of({**MINIMAL, "site": {"domain": "com.game.x"}})
    app = features_of({**MINIMAL, "app": {"bundle": "com.game.x"}})
    assert site.categorical[CAT["inventory"]] != app.categorical[CAT["inventory"]]


# ---- property-based: nothing but BidRequestError, ever --------------------------------------------
JSON_LEAVES = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
               | st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
TEMPLATE = json.loads(json.dumps(generate_bid_requests(1, seed=1)[0]))


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


TEMPLATE_PATHS = [p for p in _paths(TEMPLATE) if p]


def _outcome(raw: bytes | str) -> Features | BidRequestError:
    try:
        features = featurize(raw, 0.0)
    except BidRequestError as error:
        assert str(error)
        return error
    assert_well_formed(features)
    return features


# No deadline: the suite shares 2 cores with servers, and timing is not what these tests are about.
@settings(deadline=None)
@given(JSON_VALUES)
def test_arbitrary_json_gives_features_or_a_bid_request_error(value) -> None:
    _outcome(json.dumps(value))


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_features_or_a_bid_request_error(raw: bytes) -> None:
    _outcome(raw)


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["site", "app", "device", "user", "regs", "source", "ext", "tmax",
                                        "bcat", "badv"]), JSON_VALUES),
       st.lists(st.dictionaries(st.sampled_from(["id", "banner", "video", "native", "audio", "bidfloor",
                                                 "secure", "instl"]), JSON_VALUES), min_size=1, max_size=3))
def test_arbitrary_optional_objects_give_features_or_a_bid_request_error(top: dict, imps: list) -> None:
    _outcome(json.dumps({"id": "r1", **top, "imp": imps}))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TEMPLATE_PATHS), JSON_VALUES)
def test_any_field_of_a_real_request_replaced_by_any_json_is_handled(path: tuple, value) -> None:
    request = copy.deepcopy(TEMPLATE)
    holder = request
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    _outcome(json.dumps(request))


def test_try_featurize_returns_errors_instead_of_raising() -> None:
    assert isinstance(try_featurize(b"\x00\x01"), BidRequestError)
    assert isinstance(try_featurize(json.dumps(MINIMAL)), Features)
