"""Raw OpenRTB bid request (JSON bytes) -> fixed-size feature vectors, one request at a time.

This runs on the hot path (hundreds of thousands of requests per second across the fleet), so it is
plain Python over stdlib ``json`` with no per-request allocations beyond the two output lists; it
validates exactly the fields it reads, in the same pass.

Policy:
  * **Strict** about what makes a request not OpenRTB: not UTF-8/JSON, not an object, ``id`` missing or
    not a non-empty string, ``imp`` missing/not an array/empty, an impression that is not an object or
    has no string ``id``, both ``site`` and ``app``, a field we read having the wrong JSON type (ints
    must be JSON integers: ``300.0`` and ``true`` are not), negative sizes/floors, non-finite numbers,
    or more than ``MAX_REQUEST_BYTES``. Each raises ``BidRequestError`` naming the field.
  * **Tolerant** of everything optional being absent or ``null`` (null is read as absent), and of
    unknown enum values (an unknown ``devicetype`` maps to "unknown"), so newer OpenRTB versions and
    partial requests still score.
  * **Time**: hour of day and day of week come from ``ext.ts`` (the auction's epoch time, milliseconds,
    or seconds when below 1e11) when present, else from the server's arrival time. Logged auctions
    therefore re-score identically offline; live traffic without ``ext.ts`` uses the arrival clock,
    which is within ``tmax`` of the auction. Both are shifted to the user's local time by
    ``geo.utcoffset`` when the request has it (the partner's appetite follows local time).
"""
from __future__ import annotations

import json
import math
import time
import zlib
from typing import Any, NamedTuple

FEATURE_SPEC_VERSION = "adfilter-features/1"
MAX_REQUEST_BYTES = 64 * 1024  # real bid requests are 1-10 KB; anything this large is abuse or a bug

OS_NAMES = ("unknown", "ios", "android", "windows", "macos", "linux", "other")
FORMATS = ("none", "banner", "video", "native", "audio")
# (name, cardinality). Index 0 always means "absent/unknown"; hashed fields use 1..cardinality-1.
CATEGORICAL_FIELDS: tuple[tuple[str, int], ...] = (
    ("inventory", 1 << 14),  # site.domain (or page host) / app.bundle, hashed
    ("publisher", 1 << 12),  # publisher.id, hashed
    ("country", 512),  # geo.country, hashed
    ("region", 1 << 12),  # geo.country + geo.region, hashed
    ("os", len(OS_NAMES)),
    ("devicetype", 9),  # OpenRTB/AdCOM device type 1-8
    ("connectiontype", 8),  # OpenRTB connection type 0-7
    ("hour", 24),  # local hour of day
    ("weekday", 7),  # local day of week, Monday = 0
    ("format", len(FORMATS)),  # first impression's format
    ("size", 1024),  # first impression's creative size "WxH", hashed
)
NUMERIC_FIELDS: tuple[str, ...] = (
    "floor_log", "floor_max_log", "has_floor", "n_imps_log", "banner_share", "video_share",
    "native_share", "secure", "instl", "n_sizes_log", "video_maxduration",
    "is_app", "is_site",
    "has_device", "has_ua", "has_ifa", "lmt", "has_geo", "has_utcoffset",
    "has_user", "has_user_id", "has_buyeruid", "has_consent",
    "has_regs", "gdpr", "coppa", "has_us_privacy", "has_source", "schain_hops",
    "has_tmax", "tmax_log", "n_bcat_log", "n_badv_log", "has_timestamp", "hour_sin", "hour_cos",
)
_ZERO_IFA = "00000000-0000-0000-0000-000000000000"
_JSON_TYPE = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
              dict: "object", type(None): "null"}


class BidRequestError(ValueError):
    """The input is not a usable OpenRTB bid request; the message names the offending field."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class Features(NamedTuple):
    request_id: str
    categorical: list[int]  # len(CATEGORICAL_FIELDS)
    numeric: list[float]  # len(NUMERIC_FIELDS)


def _bad(path: str, expected: str, value: Any) -> BidRequestError:
    return BidRequestError(f"{path} must be {expected}, got {_JSON_TYPE.get(type(value), 'unknown')}")


def _obj(parent: dict, key: str, path: str) -> dict | None:
    value = parent.get(key)
    if value is None or type(value) is dict:
        return value
    raise _bad(f"{path}{key}", "an object", value)


def _str(parent: dict, key: str, path: str) -> str | None:
    value = parent.get(key)
    if value is None or type(value) is str:
        return value
    raise _bad(f"{path}{key}", "a string", value)


def _int(parent: dict, key: str, path: str) -> int | None:
    value = parent.get(key)
    if value is None or type(value) is int:
        return value
    raise _bad(f"{path}{key}", "an integer", value)


def _size(parent: dict, key: str, path: str) -> int | None:
    value = _int(parent, key, path)
    if value is not None and value < 0:
        raise BidRequestError(f"{path}{key} must be non-negative, got {value}")
    return value


def _num(parent: dict, key: str, path: str) -> float | None:
    value = parent.get(key)
    if value is None:
        return None
    if type(value) is not int and type(value) is not float:
        raise _bad(f"{path}{key}", "a number", value)
    if not math.isfinite(value) or value < 0:
        raise BidRequestError(f"{path}{key} must be a finite non-negative number, got {value}")
    return value


def _list(parent: dict, key: str, path: str) -> list | None:
    value = parent.get(key)
    if value is None or type(value) is list:
        return value
    raise _bad(f"{path}{key}", "an array", value)


def _flag(parent: dict, key: str, path: str) -> int:
    """An OpenRTB 0/1 integer flag; absent reads as 0."""
    value = _int(parent, key, path)
    if value is None:
        return 0
    if value != 0 and value != 1:
        raise BidRequestError(f"{path}{key} must be 0 or 1, got {value}")
    return value


def _bucket(text: str, cardinality: int) -> int:
    # crc32 is stable across processes (unlike hash()) and ~10x cheaper than a cryptographic hash;
    # surrogatepass keeps lone surrogates that JSON "\ud800" escapes can produce.
    return 1 + zlib.crc32(text.encode("utf-8", "surrogatepass")) % (cardinality - 1)


def _log1p_count(value: list | None) -> float:
    return math.log1p(len(value)) if value else 0.0


def _os_from_name(name: str) -> int:
    lowered = name.lower()
    if lowered.startswith(("ios", "ipados")):
        return 1
    if lowered.startswith("android"):
        return 2
    if lowered.startswith("windows"):
        return 3
    if lowered.startswith(("mac", "os x", "osx")):
        return 4
    if lowered.startswith("linux"):
        return 5
    return 6 if lowered else 0


def os_and_type_from_ua(ua: str) -> tuple[int, int]:
    """(OS index, OpenRTB devicetype) guessed from a user agent; (0, 0) when nothing matches.

    Order matters: iOS UAs contain "like Mac OS X" and Android UAs contain "Linux".
    """
    if "iPad" in ua:
        return 1, 5
    if "iPhone" in ua or "iPod" in ua or " iOS " in ua:
        return 1, 4
    if "Android" in ua:
        return 2, (4 if "Mobile" in ua else 5)
    if "Windows" in ua:
        return 3, 2
    if "Macintosh" in ua or "Mac OS X" in ua:
        return 4, 2
    if "Linux" in ua or "CrOS" in ua:
        return 5, 2
    return (6, 0) if ua else (0, 0)


def parse_json(raw: bytes | str) -> dict:
    """Bytes or text -> the top-level JSON object, refusing oversize, non-UTF-8, non-JSON and non-objects."""
    size = len(raw)
    if type(raw) is str and size > MAX_REQUEST_BYTES // 4:  # a character is 1-4 bytes in UTF-8
        size = len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_REQUEST_BYTES:
        raise BidRequestError(f"request is {size} bytes, more than the limit of {MAX_REQUEST_BYTES}")
    if type(raw) is not str:
        try:  # OpenRTB is UTF-8; json.loads(bytes) would also guess UTF-16/32 from the first bytes
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BidRequestError(f"request is not valid UTF-8: {error.reason} at byte {error.start}") from None
    try:
        request = json.loads(raw)
    except RecursionError:
        raise BidRequestError("request is not valid JSON: nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, and Python's limit on integer digits
        raise BidRequestError(f"request is not valid JSON: {error}") from None
    if type(request) is not dict:
        raise BidRequestError(f"bid request must be a JSON object, got {_JSON_TYPE[type(request)]}")
    return request


def featurize(raw: bytes | str, arrival_s: float | None = None) -> Features:
    """Features of one raw request; ``arrival_s`` (epoch seconds) defaults to now. Raises BidRequestError."""
    request = parse_json(raw)
    if "id" not in request:
        raise BidRequestError("missing required field 'id'")
    request_id = request["id"]
    if type(request_id) is not str:
        raise _bad("id", "a string", request_id)
    if not request_id:
        raise BidRequestError("id must not be empty")
    try:
        return _extract(request, request_id, arrival_s)
    except BidRequestError as error:
        error.request_id = request_id
        raise


def _extract(request: dict, request_id: str, arrival_s: float | None) -> Features:
    if "imp" not in request:
        raise BidRequestError("missing required field 'imp'")
    imps = request["imp"]
    if type(imps) is not list:
        raise _bad("imp", "an array", imps)
    if not imps:
        raise BidRequestError("imp must contain at least one impression")
    imp_num = _impressions(imps)
    first = imps[0]
    fmt, size = _first_format(first)

    site, app = _obj(request, "site", ""), _obj(request, "app", "")
    if site is not None and app is not None:
        raise BidRequestError("request must not contain both site and app")
    inventory, publisher = _inventory(site, app)

    device = _obj(request, "device", "")
    user = _obj(request, "user", "")
    regs = _obj(request, "regs", "")
    source = _obj(request, "source", "")
    ext = _obj(request, "ext", "")
    device_cat, device_num, device_geo = _device(device)
    user_num, user_geo = _user(user)
    if device_geo is not None:
        geo, geo_path = device_geo, "device.geo."
    else:
        geo, geo_path = user_geo, "user.geo."
    country, region, utcoffset = _geo(geo, geo_path)

    ts = _num(ext, "ts", "ext.") if ext is not None else None
    if ts is not None:
        seconds = ts / 1000.0 if ts >= 1e11 else ts
    else:
        seconds = time.time() if arrival_s is None else arrival_s
    minutes = seconds / 60.0 + (utcoffset or 0)
    minute_of_day = minutes % 1440.0
    weekday = int((minutes // 1440.0 + 3) % 7)  # 1970-01-01 was a Thursday
    angle = minute_of_day * (2.0 * math.pi / 1440.0)

    tmax = _size(request, "tmax", "")
    categorical = [inventory, publisher, country, region, device_cat[0], device_cat[1], device_cat[2],
                   int(minute_of_day // 60.0), weekday, fmt, size]
    numeric = [
        *imp_num, float(app is not None), float(site is not None), *device_num,
        float(geo is not None), float(utcoffset is not None), *user_num, *_regs(regs),
        *_source(source), float(tmax is not None), math.log1p(tmax) / 7.0 if tmax else 0.0,
        _log1p_count(_list(request, "bcat", "")), _log1p_count(_list(request, "badv", "")),
        float(ts is not None), math.sin(angle), math.cos(angle),
    ]
    return Features(request_id, categorical, numeric)


def _impressions(imps: list) -> list[float]:
    """Validates every impression; returns floor_log .. video_maxduration (see NUMERIC_FIELDS)."""
    floors: list[float] = []
    counts = [0, 0, 0, 0, 0]
    instl = 0
    for i, imp in enumerate(imps):
        path = f"imp[{i}]."
        if type(imp) is not dict:
            raise _bad(f"imp[{i}]", "an object", imp)
        if type(imp.get("id")) is not str:
            if "id" not in imp:
                raise BidRequestError(f"missing required field 'imp[{i}].id'")
            raise _bad(f"{path}id", "a string", imp["id"])
        floor = _num(imp, "bidfloor", path)
        if floor is not None:
            floors.append(floor)
        _flag(imp, "secure", path)
        instl |= _flag(imp, "instl", path)
        banner, video = _obj(imp, "banner", path), _obj(imp, "video", path)
        native, audio = _obj(imp, "native", path), _obj(imp, "audio", path)
        if banner is not None:
            _banner_sizes(banner, f"{path}banner.")
            counts[1] += 1
        if video is not None:
            _size(video, "w", f"{path}video.")
            _size(video, "h", f"{path}video.")
            _size(video, "maxduration", f"{path}video.")
            counts[2] += 1
        if native is not None:
            counts[3] += 1
        if audio is not None:
            counts[4] += 1
    first = imps[0]
    first_floor = first.get("bidfloor") or 0.0
    max_floor = max(floors) if floors else 0.0
    banner = first.get("banner")
    video = first.get("video")
    n = len(imps)
    return [
        math.log1p(first_floor), math.log1p(max_floor), float(max_floor > 0.0), math.log1p(n),
        counts[1] / n, counts[2] / n, counts[3] / n, float(first.get("secure") == 1), float(instl),
        math.log1p(len(banner.get("format") or ())) if banner else 0.0,
        (video.get("maxduration") or 0) / 60.0 if video else 0.0,
    ]


def _banner_sizes(banner: dict, path: str) -> None:
    _size(banner, "w", path)
    _size(banner, "h", path)
    formats = _list(banner, "format", path)
    for j, item in enumerate(formats or ()):
        if type(item) is not dict:
            raise _bad(f"{path}format[{j}]", "an object", item)
        _size(item, "w", f"{path}format[{j}].")
        _size(item, "h", f"{path}format[{j}].")


def _first_format(imp: dict) -> tuple[int, int]:
    """(format index, hashed "WxH" bucket) of an already validated impression."""
    banner = imp.get("banner")
    if banner is not None:
        w, h = banner.get("w"), banner.get("h")
        if w is None or h is None:
            formats = banner.get("format")
            if formats:
                w, h = formats[0].get("w"), formats[0].get("h")
        return 1, _bucket(f"{w}x{h}", 1024) if w is not None and h is not None else 0
    video = imp.get("video")
    if video is not None:
        w, h = video.get("w"), video.get("h")
        return 2, _bucket(f"v{w}x{h}", 1024) if w is not None and h is not None else 0
    if imp.get("native") is not None:
        return 3, 0
    return (4, 0) if imp.get("audio") is not None else (0, 0)


def _inventory(site: dict | None, app: dict | None) -> tuple[int, int]:
    """Hashed inventory (domain or bundle) and publisher buckets."""
    if site is not None:
        holder, path = site, "site."
        name = _str(site, "domain", path)
        if not name:
            page = _str(site, "page", path)
            name = page.split("://", 1)[-1].split("/", 1)[0] if page else None
        key = f"site:{name.lower()}" if name else None
    elif app is not None:
        holder, path = app, "app."
        name = _str(app, "bundle", path)
        key = f"app:{name.lower()}" if name else None
    else:
        return 0, 0
    publisher = _obj(holder, "publisher", path)
    pub_id = _str(publisher, "id", f"{path}publisher.") if publisher is not None else None
    return (_bucket(key, 1 << 14) if key else 0), (_bucket(pub_id, 1 << 12) if pub_id else 0)


def _device(device: dict | None) -> tuple[tuple[int, int, int], list[float], dict | None]:
    """((os, devicetype, connectiontype), [has_device, has_ua, has_ifa, lmt], geo).

    device.os and device.devicetype win over what the user agent suggests (iPadOS Safari, for one,
    sends a macOS user agent).
    """
    if device is None:
        return (0, 0, 0), [0.0, 0.0, 0.0, 0.0], None
    path = "device."
    ua = _str(device, "ua", path)
    os_name = _str(device, "os", path)
    devicetype = _int(device, "devicetype", path)
    connection = _int(device, "connectiontype", path)
    ifa = _str(device, "ifa", path)
    lmt = _flag(device, "lmt", path)
    os_index = _os_from_name(os_name) if os_name else 0
    if ua and (not os_index or devicetype is None):
        ua_os, ua_type = os_and_type_from_ua(ua)
        os_index = os_index or ua_os
        if devicetype is None:
            devicetype = ua_type
    if devicetype is None or not 0 <= devicetype <= 8:
        devicetype = 0
    if connection is None or not 0 <= connection <= 7:
        connection = 0
    flags = [1.0, float(bool(ua)), float(bool(ifa) and ifa != _ZERO_IFA), float(lmt)]
    return (os_index, devicetype, connection), flags, _obj(device, "geo", path)


def _geo(geo: dict | None, path: str) -> tuple[int, int, int | None]:
    """(country bucket, region bucket, utcoffset minutes or None)."""
    if geo is None:
        return 0, 0, None
    country = _str(geo, "country", path)
    region = _str(geo, "region", path)
    utcoffset = _int(geo, "utcoffset", path)
    if utcoffset is not None and not -720 <= utcoffset <= 840:
        raise BidRequestError(f"{path}utcoffset must be between -720 and 840 minutes, got {utcoffset}")
    country = country.upper() if country else ""
    return (_bucket(country, 512) if country else 0,
            _bucket(f"{country}/{region.upper()}", 1 << 12) if region else 0,
            utcoffset)


def _user(user: dict | None) -> tuple[list[float], dict | None]:
    """([has_user, has_user_id, has_buyeruid, has_consent], user.geo); consent from 2.6 field or 2.5 ext."""
    if user is None:
        return [0.0, 0.0, 0.0, 0.0], None
    path = "user."
    consent = _str(user, "consent", path)
    ext = _obj(user, "ext", path)
    if not consent and ext is not None:
        consent = _str(ext, "consent", "user.ext.")
    flags = [1.0, float(bool(_str(user, "id", path))), float(bool(_str(user, "buyeruid", path))),
             float(bool(consent))]
    return flags, _obj(user, "geo", path)


def _regs(regs: dict | None) -> list[float]:
    """[has_regs, gdpr, coppa, has_us_privacy]; gdpr and us_privacy read from 2.6 fields or 2.5 ext."""
    if regs is None:
        return [0.0, 0.0, 0.0, 0.0]
    ext = _obj(regs, "ext", "regs.")
    gdpr = _flag(regs, "gdpr", "regs.")
    us_privacy = _str(regs, "us_privacy", "regs.")
    if ext is not None:
        gdpr = gdpr or _flag(ext, "gdpr", "regs.ext.")
        us_privacy = us_privacy or _str(ext, "us_privacy", "regs.ext.")
    return [1.0, float(gdpr), float(_flag(regs, "coppa", "regs.")), float(bool(us_privacy))]


def _source(source: dict | None) -> list[float]:
    """[has_source, schain hops / 5] from source.schain (2.6) or source.ext.schain (2.5)."""
    if source is None:
        return [0.0, 0.0]
    schain, path = _obj(source, "schain", "source."), "source.schain."
    if schain is None:
        ext = _obj(source, "ext", "source.")
        if ext is not None:
            schain, path = _obj(ext, "schain", "source.ext."), "source.ext.schain."
    nodes = _list(schain, "nodes", path) if schain is not None else None
    return [1.0, min(len(nodes), 10) / 5.0 if nodes else 0.0]


def try_featurize(raw: bytes | str, arrival_s: float | None = None) -> Features | BidRequestError:
    """``featurize`` that returns the error instead of raising, for batch callers (scorer, Triton).

    The catch-all is deliberate: a featurizer bug triggered by one request must cost that request,
    never the other requests of its batch (the property tests hold ``featurize`` to BidRequestError).
    """
    try:
        return featurize(raw, arrival_s)
    except BidRequestError as error:
        return error
    except Exception as error:  # noqa: BLE001
        return BidRequestError(f"internal error while reading the request: {type(error).__name__}")
