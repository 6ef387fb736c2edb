"""Synthetic OpenRTB 2.5/2.6 bid logs with a known "did the demand partner bid" label.

Why synthetic: no real bid logs may leave an exchange, yet the model, the scorer, the Triton model and
the load-test simulator all need realistic, varied requests. Because the label comes from a latent
logistic model that we wrote down (docs/adfilter.md, "Generating process"), we also know how well any
model *could* do: every labelled sample carries the generator's own bid probability.

Two levels of randomness:
  * the *world* (publishers, their quality, floors and formats) is drawn once from ``WORLD_SEED``, so
    every sample seed describes the same market and a model trained on seed 1 is valid on seed 2;
  * each *sample* seed drives a ``random.Random`` stream of requests (reproducible across processes
    and platforms; ``random`` is used rather than numpy because per-scalar draws are ~20x cheaper).

Requests carry ``ext.ts`` (epoch milliseconds of the auction) in most cases; see features.py for what
happens when it is absent.
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

WORLD_SEED = 20_240_603
START_MS = 1_717_372_800_000  # 2024-06-03T00:00:00Z, a Monday; samples span the 28 days after it
SPAN_MS = 28 * 86_400_000
N_PUBLISHERS = 1500
INTERCEPT = -1.7
NOISE_SD = 0.5  # latent per-request noise the features cannot see


@dataclass(frozen=True)
class Region:
    code: str
    utcoffset: int  # minutes from UTC (OpenRTB geo.utcoffset); daylight saving ignored


@dataclass(frozen=True)
class Country:
    code: str  # ISO-3166-1 alpha-3, as OpenRTB geo.country
    weight: float  # share of traffic
    effect: float  # additive logit effect
    price: float  # CPM multiplier of the market
    ios_share: float  # share of iOS among mobile devices
    gdpr: bool
    regions: tuple[Region, ...]


def _regions(*pairs: tuple[str, int]) -> tuple[Region, ...]:
    return tuple(Region(code, offset) for code, offset in pairs)


COUNTRIES: tuple[Country, ...] = (
    Country("USA", 0.32, 0.45, 1.6, 0.55, False,
            _regions(("CA", -480), ("NY", -300), ("TX", -360), ("FL", -300), ("IL", -360), ("WA", -480))),
    Country("GBR", 0.07, 0.30, 1.3, 0.50, True, _regions(("ENG", 0), ("SCT", 0))),
    Country("DEU", 0.07, 0.25, 1.2, 0.35, True, _regions(("BY", 60), ("BE", 60), ("NW", 60))),
    Country("FRA", 0.05, 0.15, 1.1, 0.30, True, _regions(("IDF", 60), ("ARA", 60))),
    Country("JPN", 0.05, 0.20, 1.3, 0.65, False, _regions(("13", 540), ("27", 540))),
    Country("CAN", 0.04, 0.25, 1.3, 0.50, False, _regions(("ON", -300), ("QC", -300), ("BC", -480))),
    Country("AUS", 0.03, 0.20, 1.2, 0.50, False, _regions(("NSW", 600), ("VIC", 600))),
    Country("BRA", 0.08, -0.30, 0.5, 0.15, False, _regions(("SP", -180), ("RJ", -180))),
    Country("MEX", 0.05, -0.25, 0.5, 0.20, False, _regions(("CMX", -360), ("JAL", -360))),
    Country("IND", 0.12, -0.80, 0.25, 0.05, False, _regions(("MH", 330), ("DL", 330), ("KA", 330))),
    Country("IDN", 0.06, -0.60, 0.3, 0.10, False, _regions(("JK", 420), ("JI", 420))),
    Country("NGA", 0.03, -1.00, 0.2, 0.10, False, _regions(("LA", 60),)),
    Country("ZAF", 0.03, -0.40, 0.4, 0.20, False, _regions(("GT", 120), ("WC", 120))),
)

# Market CPM (USD) of a format before the country multiplier; floors are drawn around it and the
# partner's appetite falls as the floor rises above it.
FORMAT_CPM = {"banner": 0.35, "video": 2.5, "native": 0.7}
FORMAT_EFFECT = {"banner": 0.0, "video": 0.5, "native": -0.2}
DESKTOP_SIZES = ((728, 90), (300, 250), (160, 600), (300, 600), (970, 250))
MOBILE_SIZES = ((320, 50), (300, 250), (320, 480), (320, 100))
SIZE_EFFECT = {(300, 250): 0.2, (728, 90): 0.0, (320, 50): -0.4, (160, 600): -0.3, (300, 600): 0.1,
               (970, 250): 0.15, (320, 480): 0.3, (320, 100): -0.2}
OS_EFFECT = {"ios": 0.3, "android": 0.0, "windows": 0.1, "macos": 0.25}
# OpenRTB connectiontype: 0 unknown, 1 ethernet, 2 wifi, 3 cellular unknown, 4 2G, 5 3G, 6 4G, 7 5G.
MOBILE_CONNECTIONS = ((2, 0.45), (3, 0.05), (4, 0.02), (5, 0.08), (6, 0.35), (7, 0.05))
DESKTOP_CONNECTIONS = ((1, 0.3), (2, 0.6), (0, 0.1))
IAB_CATEGORIES = ("IAB1", "IAB2", "IAB3", "IAB9", "IAB12", "IAB17", "IAB19", "IAB20", "IAB22")
_WORDS = ("daily", "sport", "news", "tech", "play", "cook", "travel", "money", "game", "music", "star",
          "city", "auto", "health", "home", "style", "quiz", "puzzle", "weather", "photo", "chat", "fit")
_TLDS = ("com", "net", "io", "co.uk", "de", "fr", "com.br", "in", "jp")
_ANDROID_MODELS = (("Samsung", "SM-S918B"), ("Samsung", "SM-A546E"), ("Google", "Pixel 8"),
                   ("Xiaomi", "2201117TG"), ("OnePlus", "CPH2449"), ("Motorola", "moto g84 5G"))
_VIDEO_SIZES = ((640, 480), (1280, 720), (1920, 1080), (320, 480))


@dataclass(frozen=True)
class Publisher:
    id: str
    kind: str  # "site" or "app"
    name: str
    domain: str  # sites
    android_bundle: str  # apps
    ios_bundle: str  # apps: numeric App Store id, as exchanges send it
    category: str
    effect: float  # latent quality seen by the partner
    floor_scale: float  # how aggressive the publisher's floors are
    secure_share: float


@dataclass(frozen=True)
class World:
    publishers: tuple[Publisher, ...]
    cum_popularity: tuple[float, ...]  # Zipf-like head and long tail
    cum_countries: tuple[float, ...]


def _make_world(seed: int = WORLD_SEED) -> World:
    rng = random.Random(seed)
    publishers = []
    for k in range(N_PUBLISHERS):
        kind = "site" if rng.random() < 0.6 else "app"
        name = f"{rng.choice(_WORDS)}{rng.choice(_WORDS)}{k}"
        publishers.append(Publisher(
            id=f"pub-{rng.randrange(10**6):06d}",
            kind=kind,
            name=name,
            domain=f"{name}.{rng.choice(_TLDS)}",
            android_bundle=f"com.{rng.choice(_WORDS)}.{name}",
            ios_bundle=str(rng.randrange(10**9, 2 * 10**9)),
            category=rng.choice(IAB_CATEGORIES),
            effect=rng.gauss(0.0, 0.7),
            floor_scale=math.exp(rng.gauss(0.0, 0.5)),
            secure_share=rng.uniform(0.6, 1.0),
        ))
    weights = [1.0 / (rank + 10) ** 1.1 for rank in range(N_PUBLISHERS)]
    rng.shuffle(weights)
    return World(tuple(publishers), _cumulative(weights), _cumulative([c.weight for c in COUNTRIES]))


def _cumulative(weights: list[float]) -> tuple[float, ...]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return tuple(out)


WORLD = _make_world()


@dataclass(frozen=True)
class LabeledBidRequest:
    """One auction as a log holds it: the request, when the exchange received it, whether the partner bid,
    and the generator's own bid probability (includes noise no model can see: a ceiling, not a target)."""

    request: dict
    timestamp_ms: int  # arrival time; equals ext.ts when the request carries it
    bid: bool
    probability: float


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


class _RequestMaker:
    """Draws one request and its latent logit terms; a class only to share the RNG and world."""

    def __init__(self, seed: int, world: World = WORLD) -> None:
        self.rng = random.Random(seed)
        self.world = world

    def make(self) -> LabeledBidRequest:
        rng = self.rng
        pub = rng.choices(self.world.publishers, cum_weights=self.world.cum_popularity)[0]
        country = rng.choices(COUNTRIES, cum_weights=self.world.cum_countries)[0]
        region = rng.choice(country.regions)
        ts_ms = START_MS + rng.randrange(SPAN_MS)
        os_name, devicetype = self._device_kind(pub, country)
        connection = self._connection(os_name)
        shared = INTERCEPT + pub.effect + country.effect + OS_EFFECT[os_name] + rng.gauss(0.0, NOISE_SD)
        if devicetype == 5:
            shared += 0.1

        request: dict = {"id": f"{rng.getrandbits(128):032x}", "at": rng.choice((1, 1, 1, 2)),
                         "tmax": rng.choice((120, 200, 250, 300, 500, 1000))}
        if request["tmax"] < 200:
            shared -= 0.5  # the partner rarely answers in time
        if rng.random() < 0.95:
            request["ext"] = {"ts": ts_ms}
        local = ((ts_ms - START_MS) // 60_000 + region.utcoffset) % (7 * 1440)  # minutes since Monday 00:00
        hour, weekday = (local % 1440) / 60.0, local // 1440
        shared += 0.35 * math.cos(2 * math.pi * (hour - 20.0) / 24.0) + (0.15 if weekday >= 5 else 0.0)

        imps, imp_logits = self._imps(pub, country, os_name, connection)
        request["imp"] = imps
        request[pub.kind] = self._inventory(pub, os_name)
        shared += self._device(request, pub, country, region, os_name, devicetype, connection)
        shared += self._user_and_regs(request, country)
        shared += self._source(request)
        if rng.random() < 0.3:
            request["bcat"] = rng.sample(IAB_CATEGORIES, rng.randint(1, 4))
        if rng.random() < 0.2:
            request["badv"] = [f"brand{rng.randrange(100)}.com" for _ in range(rng.randint(1, 5))]
        request["cur"] = ["USD"]

        # The partner bids on the request if it bids on any impression.
        no_bid = 1.0
        for z in imp_logits:
            no_bid *= 1.0 - sigmoid(shared + z)
        probability = 1.0 - no_bid
        return LabeledBidRequest(request, ts_ms, rng.random() < probability, probability)

    def _device_kind(self, pub: Publisher, country: Country) -> tuple[str, int]:
        """OS and OpenRTB devicetype (2 PC, 4 phone, 5 tablet): apps are mobile, sites are mixed."""
        rng = self.rng
        if pub.kind == "site" and rng.random() < 0.45:
            return ("windows" if rng.random() < 0.7 else "macos"), 2
        os_name = "ios" if rng.random() < country.ios_share else "android"
        tablet = rng.random() < (0.15 if os_name == "ios" else 0.1)
        return os_name, 5 if tablet else 4

    def _connection(self, os_name: str) -> int:
        table = DESKTOP_CONNECTIONS if os_name in ("windows", "macos") else MOBILE_CONNECTIONS
        return self.rng.choices([c for c, _ in table], weights=[w for _, w in table])[0]

    def _imps(self, pub: Publisher, country: Country, os_name: str,
              connection: int) -> tuple[list[dict], list[float]]:
        rng = self.rng
        desktop = os_name in ("windows", "macos")
        formats = (("banner", 0.8), ("video", 0.12), ("native", 0.08)) if pub.kind == "site" else (
            ("banner", 0.5), ("video", 0.3), ("native", 0.2))
        n = rng.choices((1, 2, 3), weights=(0.8, 0.15, 0.05))[0]
        imps, logits = [], []
        for i in range(n):
            fmt = rng.choices([f for f, _ in formats], weights=[w for _, w in formats])[0]
            imp: dict = {"id": str(i + 1)}
            z = FORMAT_EFFECT[fmt]
            if fmt == "banner":
                w, h = rng.choice(DESKTOP_SIZES if desktop else MOBILE_SIZES)
                imp["banner"] = {"w": w, "h": h, "pos": rng.choice((0, 1, 3))}
                if rng.random() < 0.3:
                    alt = rng.choice(DESKTOP_SIZES if desktop else MOBILE_SIZES)
                    imp["banner"]["format"] = [{"w": w, "h": h}, {"w": alt[0], "h": alt[1]}]
                z += SIZE_EFFECT[(w, h)]
                if (w, h) == (320, 480):
                    imp["instl"] = 1
            elif fmt == "video":
                w, h = rng.choice(_VIDEO_SIZES)
                maxduration = rng.choice((15, 30, 60))
                imp["video"] = {"mimes": ["video/mp4"], "w": w, "h": h, "minduration": 5,
                                "maxduration": maxduration, "protocols": [2, 3, 5, 6],
                                "plcmt": rng.choice((1, 2, 3, 4))}
                z += 0.4 if connection in (1, 2) else 0.0  # video needs bandwidth
                z -= 0.2 if maxduration == 60 else 0.0
            else:
                native = {"ver": "1.2", "assets": [{"id": 1, "required": 1, "title": {"len": 90}},
                                                   {"id": 2, "img": {"type": 3, "w": 1200, "h": 627}}]}
                imp["native"] = {"request": json.dumps(native, separators=(",", ":")), "ver": "1.2"}
            if rng.random() < 0.8:
                value = FORMAT_CPM[fmt] * country.price
                floor = round(value * pub.floor_scale * math.exp(rng.gauss(-0.2, 0.6)), 2)
                imp["bidfloor"], imp["bidfloorcur"] = floor, "USD"
                z -= 1.2 * math.log1p(floor / value)  # interaction: floor relative to the market's value
            if rng.random() < 0.9:
                imp["secure"] = 1 if rng.random() < pub.secure_share else 0
                z -= 0.3 if imp["secure"] == 0 else 0.0
            imps.append(imp)
            logits.append(z)
        return imps, logits

    def _inventory(self, pub: Publisher, os_name: str) -> dict:
        rng = self.rng
        publisher = {"id": pub.id, "name": pub.name}
        if pub.kind == "site":
            return {"id": f"s{pub.id[4:]}", "domain": pub.domain, "cat": [pub.category],
                    "page": f"https://{pub.domain}/{rng.choice(_WORDS)}/{rng.randrange(10**5)}",
                    "publisher": publisher}
        bundle = pub.ios_bundle if os_name == "ios" else pub.android_bundle
        return {"id": f"a{pub.id[4:]}", "bundle": bundle, "name": pub.name, "cat": [pub.category],
                "ver": f"{rng.randint(1, 9)}.{rng.randint(0, 20)}", "publisher": publisher}

    def _device(self, request: dict, pub: Publisher, country: Country, region: Region, os_name: str,
                devicetype: int, connection: int) -> float:
        """Adds device (and its geo) to the request; returns the latent logit terms they carry."""
        rng = self.rng
        z = -0.4 if connection in (4, 5) else 0.0  # slow 2G/3G connections
        if rng.random() >= 0.95:
            return z
        device: dict = {}
        make, model = rng.choice(_ANDROID_MODELS) if os_name == "android" else ("Apple", "iPhone")
        if rng.random() < 0.97:
            device["ua"] = self._user_agent(os_name, devicetype, pub.kind == "app", model)
        if rng.random() < 0.85:
            device["devicetype"] = 1 if devicetype in (4, 5) and rng.random() < 0.1 else devicetype
        if rng.random() < 0.8:
            device["os"] = {"ios": "iOS", "android": "Android", "windows": "Windows",
                            "macos": rng.choice(("macOS", "Mac OS X"))}[os_name]
        if rng.random() < 0.9:
            device["connectiontype"] = connection
        if os_name == "ios":
            device["make"], device["model"] = "Apple", "iPad" if devicetype == 5 else "iPhone"
        elif os_name == "android":
            device["make"], device["model"] = make, model
        device["ip"] = f"{rng.randint(1, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.0"
        device["language"] = rng.choice(("en", "de", "fr", "ja", "pt", "es", "hi"))
        if pub.kind == "app":
            limited = rng.random() < 0.25
            device["lmt"] = int(limited)
            if limited:
                device["ifa"] = "00000000-0000-0000-0000-000000000000"
                z -= 0.5
            elif rng.random() < 0.8:
                device["ifa"] = "-".join(f"{rng.getrandbits(b * 4):0{b}x}" for b in (8, 4, 4, 4, 12))
                z += 0.4
        if rng.random() < 0.85:
            geo: dict = {"country": country.code, "type": 2}
            if rng.random() < 0.8:
                geo["region"] = region.code
            if rng.random() < 0.7:
                geo["utcoffset"] = region.utcoffset
            if rng.random() < 0.3:
                geo["lat"], geo["lon"] = round(rng.uniform(-60, 70), 4), round(rng.uniform(-180, 180), 4)
            device["geo"] = geo
        request["device"] = device
        return z

    def _user_agent(self, os_name: str, devicetype: int, app: bool, android_model: str) -> str:
        rng = self.rng
        chrome = f"{rng.randint(110, 126)}.0.0.0"
        if os_name == "ios":
            major, minor = rng.randint(15, 17), rng.randint(0, 6)
            if app and rng.random() < 0.5:
                return f"{rng.choice(_WORDS).title()}/{rng.randint(1, 9)}.{rng.randint(0, 9)} " \
                       f"({'iPad' if devicetype == 5 else 'iPhone'}; iOS {major}.{minor}; Scale/3.00)"
            if devicetype == 5 and not app and rng.random() < 0.5:  # iPadOS Safari: desktop site
                return ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
                        f"(KHTML, like Gecko) Version/{major}.{minor} Safari/605.1.15")
            device = "iPad; CPU OS" if devicetype == 5 else "iPhone; CPU iPhone OS"
            return (f"Mozilla/5.0 ({device} {major}_{minor} like Mac OS X) AppleWebKit/605.1.15 "
                    f"(KHTML, like Gecko) Version/{major}.{minor} Mobile/15E148 Safari/604.1")
        if os_name == "android":
            mobile = " Mobile" if devicetype != 5 else ""
            webview = "; wv" if app else ""
            return (f"Mozilla/5.0 (Linux; Android {rng.randint(10, 14)}; {android_model}{webview}) "
                    f"AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}{mobile} Safari/537.36")
        if os_name == "windows":
            if rng.random() < 0.2:
                firefox = rng.randint(115, 126)
                return (f"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{firefox}.0) Gecko/20100101 "
                        f"Firefox/{firefox}.0")
            edge = f" Edg/{chrome}" if rng.random() < 0.3 else ""
            return (f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                    f"Chrome/{chrome} Safari/537.36{edge}")
        if rng.random() < 0.5:
            return ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
                    f"(KHTML, like Gecko) Version/{rng.randint(15, 17)}.{rng.randint(0, 6)} Safari/605.1.15")
        return ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
                f"Chrome/{chrome} Safari/537.36")

    def _user_and_regs(self, request: dict, country: Country) -> float:
        """Adds user, regs (2.5 style in ext or 2.6 top-level, at random); returns their logit terms."""
        rng = self.rng
        z = 0.0
        consent = False
        if rng.random() < 0.7:
            user: dict = {}
            if rng.random() < 0.9:
                user["id"] = f"u{rng.getrandbits(64):016x}"
                z += 0.2
            if rng.random() < 0.4:  # cookie-synced: the partner knows this user
                user["buyeruid"] = f"b{rng.getrandbits(64):016x}"
                z += 0.9
            if rng.random() < 0.3:
                user["yob"] = rng.randint(1950, 2008)
            if country.gdpr and rng.random() < 0.7:
                consent = True
                if rng.random() < 0.5:
                    user["consent"] = "CP" + f"{rng.getrandbits(120):030x}".upper()
                else:
                    user["ext"] = {"consent": "CP" + f"{rng.getrandbits(120):030x}".upper()}
            request["user"] = user
        coppa = rng.random() < 0.01
        if coppa:
            z -= 2.0
        if country.gdpr and not consent:
            z -= 1.5  # interaction: an EU user without a consent string is rarely bid on
        if rng.random() < 0.6 or coppa or country.gdpr:
            regs: dict = {"coppa": int(coppa)}
            gdpr = int(country.gdpr)
            if rng.random() < 0.5:
                regs["gdpr"] = gdpr  # OpenRTB 2.6
            else:
                regs["ext"] = {"gdpr": gdpr}  # OpenRTB 2.5
            if country.code == "USA" and rng.random() < 0.5:
                regs["us_privacy"] = rng.choice(("1YNN", "1YYN", "1---"))
            request["regs"] = regs
        return z

    def _source(self, request: dict) -> float:
        """Adds source with a supply chain of 1-3 hops (2.6 or 2.5 style); each extra hop costs appetite."""
        rng = self.rng
        if rng.random() >= 0.5:
            return 0.0
        hops = rng.choices((1, 2, 3), weights=(0.5, 0.35, 0.15))[0]
        schain = {"complete": 1, "ver": "1.0", "nodes": [
            {"asi": f"ssp{k}.example", "sid": f"{rng.randrange(10**6)}", "hp": 1} for k in range(hops)]}
        source: dict = {"tid": f"{rng.getrandbits(64):016x}"}
        if rng.random() < 0.5:
            source["schain"] = schain
        else:
            source["ext"] = {"schain": schain}
        request["source"] = source
        return -0.25 * (hops - 1)


def iter_labeled_requests(seed: int, n: int | None = None) -> Iterator[LabeledBidRequest]:
    """Stream of labelled auctions for one seed; endless when ``n`` is None (for load generators)."""
    maker = _RequestMaker(seed)
    count = 0
    while n is None or count < n:
        yield maker.make()
        count += 1


def iter_bid_requests(seed: int, n: int | None = None) -> Iterator[dict]:
    """The requests of ``iter_labeled_requests`` alone, as a load-test simulator sends them."""
    for sample in iter_labeled_requests(seed, n):
        yield sample.request


def generate_labeled(n: int, seed: int) -> list[LabeledBidRequest]:
    return list(iter_labeled_requests(seed, n))


def generate_bid_requests(n: int, seed: int) -> list[dict]:
    """``n`` OpenRTB bid requests (dicts ready for ``json.dumps``); same seed, same requests."""
    return list(iter_bid_requests(seed, n))
