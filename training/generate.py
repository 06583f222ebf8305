"""Synthetic ga_sessions.csv / ga_hits.csv of the real files' shape.

The real exports are not public; this writes files with their columns, types, null
conventions, identifier structure and the published shares and conversion effects
(`training.published`, from ../shared/data-spec.md), in chunks of sessions so memory
stays bounded at any size.

Conversion is drawn from ``p_convert``, a logistic function of the session row's own
fields (written to truth.csv, which no model is fitted or chosen on; the training report
only quotes it beside the Hot / Warm / Cold tiers). Its terms are of two kinds:

* one effect per cell of each published grouping (utm_medium, the named sources,
  device and organic traffic, visit number, hour, weekday, period, city ...), fitted on
  a pilot sample so that every published conversion rate comes out as published;
* unpublished effects of the long tails (the hashed campaigns, ad contents, keywords,
  sources and small cities), scaled so that the ROC-AUC of ``p_convert`` against the
  drawn outcomes, the Bayes AUC, is the targeted 0.74.

A visitor's intent, which no session field shows, enters through the draw and through
the hits: a session's hits are generated knowing its outcome. Before their first target
hit, converting sessions (and a minority of the others) browse with intent: more car
cards and photos, the catalogue and the subscription landing page, and longer pauses
between hits (time on site).
"""

from __future__ import annotations

import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from scipy.special import ndtr

from features.columns import HIT_COLUMNS, SESSION_COLUMNS
from training import published as pub

FULL_SESSIONS = pub.SESSIONS
FIRST_DAY = date(2021, 5, 19)
LAST_DAY = date(2021, 12, 31)
MISSING_DAY = date(2021, 7, 4)  # the export has one day without sessions
COARSE_UNTIL = date(2021, 11, 1)  # older records: hour-rounded times, no device_os, no hit_time
COARSE_SHARE = 0.584  # of sessions, consistent with 3.20% / 2.01% and 2.705% overall
NOON_ARTEFACT = 0.017  # coarse records whose unknown time was written as 12:00:00
MSK_OFFSET_S = 3 * 3600
MAX_HITS = 500
CLIENT_SIZE_EXPONENT = 3.05  # sessions per client ~ k**-3: 1.34 on average, hundreds at most
MAX_VISIT_NUMBER = 564
PILOT_SESSIONS = 120_000

# named sources and their shares; the tail shares the rest
SOURCES = [(s, share) for s, share in pub.SHARES["utm_source"].items()] + [
    ("QxAxdyPLuQMEcrdZWdWb", 0.012),
    ("ISrKoXQCxqqYvAZICvjs", 0.011),
    ("IZEXUFLARCUMynmHNBGo", 0.009),
    ("PlbkrSYoHuZBWfYjYnfw", 0.008),
    ("gVRrcxiDQubJiljoTbGm", 0.007),
]
ORGANIC = [("(none)", 0.163), ("referral", 0.080), ("organic", 0.034)]
PAID = [
    ("banner", 0.297),
    ("cpc", 0.232),
    ("cpm", 0.128),
    ("email", 0.018),
    ("push", 0.015),
    ("stories", 0.008),
    ("blogger_channel", 0.006),
    ("smartbanner", 0.005),
    ("blogger_stories", 0.004),
    ("cpa", 0.003),
    ("tg", 0.002),
    ("app", 0.002),
    ("post", 0.001),
    ("smm", 0.001),
]
RARE_MEDIUMS = (
    "outlook info_text partner sms qr vk ok landing yandex google dzen promo sber sbol "
    "article fb instagram youtube clicks web_polka nkr medium desktop mobile "
    "Sbol_catalog catalogue static link last linktest Social CPM cbaafe main_polka "
    "users sber_app reach yandex_cpc google_cpc"
).split()
DESKTOP_ORGANIC = 0.47  # desktop traffic is more often organic (4.76% vs 1.70% converts)
DEVICES = [("mobile", 0.793), ("desktop", 0.197), ("tablet", 0.010)]
BROWSERS = [
    ("Chrome", 0.545),
    ("Safari", 0.257),
    ("YaBrowser", 0.072),
    ("Safari (in-app)", 0.038),
    ("Android Webview", 0.020),
    ("Samsung Internet", 0.020),
    ("Opera", 0.015),
    ("Firefox", 0.010),
    ("Edge", 0.010),
    ("Android Browser", 0.005),
    ("UC Browser", 0.003),
    ("Mozilla Compatible Agent", 0.003),
    ("(not set)", 0.002),
]
RARE_BROWSERS = (
    "Opera Mini|Puffin|MRCHROME|Maxthon|Coc Coc|Iron|Vivaldi|Pale Moon|SeaMonkey|"
    "Chrome (in-app)|Amazon Silk|Android Runtime|Internet Explorer|NetFront|Nokia Browser|"
    "BlackBerry|Konqueror|Sputnik|Atom|Orbitum|Amigo|Kinza|Whale|Brave|DuckDuckGo|"
    "Mozilla|Safari (web view)|Opera Touch|Phoenix|Yandex Lite|MIUI Browser|Huawei Browser|"
    "Vivo Browser|Oppo Browser|Realme Browser|Dolphin|Lunascape|Otter|Avant|Epic|"
    "Cent Browser|Slimjet|Comodo Dragon|Torch"
).split("|")
MOBILE_BRANDS = [
    ("Apple", 0.36),
    ("Samsung", 0.22),
    ("Xiaomi", 0.20),
    ("Huawei", 0.12),
    ("Realme", 0.03),
    ("OPPO", 0.015),
    ("Vivo", 0.015),
    ("OnePlus", 0.01),
    ("Asus", 0.01),
    ("Nokia", 0.01),
    ("Sony", 0.01),
    ("(not set)", 0.01),
]
RARE_BRANDS = (
    "ZTE Meizu Lenovo Motorola LG HTC Google Tecno Infinix Alcatel BQ Honor Blackview "
    "Doogee Ulefone Umidigi Oukitel Cubot Wileyfox Prestigio Fly Highscreen Vertex Philips "
    "Sharp Micromax Lava Itel Poco Nubia Coolpad Leagoo Elephone HomTom Vsmart Wiko Condor "
    "Digma Irbis Dexp Haier TCL Hisense Panasonic Kyocera Cat Energizer Gionee"
).split()
OS_FOR_RARE = [
    "Chrome OS",
    "BlackBerry",
    "Windows Phone",
    "Tizen",
    "Samsung",
    "Nokia",
    "Firefox OS",
]
MOBILE_SCREENS = "414x896 375x812 393x851 360x780 375x667 360x800 412x915 390x844 360x640".split()
DESKTOP_SCREENS = "1920x1080 1536x864 1440x900 1366x768 1280x720 2560x1440 1600x900".split()
TABLET_SCREENS = "768x1024 810x1080 800x1280 1024x1366 834x1112".split()
CITIES = [  # city, share of sessions in Russia
    ("Moscow", 0.447),
    ("Saint Petersburg", 0.165),
    ("(not set)", 0.037),
    ("Yekaterinburg", 0.020),
    ("Krasnodar", 0.020),
    ("Kazan", 0.017),
    ("Samara", 0.015),
    ("Nizhny Novgorod", 0.014),
    ("Ufa", 0.012),
    ("Novosibirsk", 0.012),
    ("Rostov-on-Don", 0.010),
    ("Chelyabinsk", 0.009),
    ("Voronezh", 0.008),
    ("Balashikha", 0.008),
    ("Podolsk", 0.007),
    ("Khimki", 0.006),
    ("Mytishchi", 0.006),
    ("Korolyov", 0.005),
    ("Lyubertsy", 0.005),
    ("Tula", 0.005),
    ("Perm", 0.005),
    ("Krasnoyarsk", 0.005),
    ("Volgograd", 0.005),
    ("Saratov", 0.004),
    ("Tyumen", 0.004),
    ("Sochi", 0.004),
    ("Yaroslavl", 0.004),
]
COUNTRIES = (
    "Ukraine|Belarus|Kazakhstan|United States|Germany|Uzbekistan|Turkey|Armenia|Georgia|"
    "Kyrgyzstan|Netherlands|United Kingdom|Azerbaijan|Tajikistan|Moldova|Latvia|Estonia|"
    "Lithuania|Finland|France|Italy|Spain|Israel|United Arab Emirates|Cyprus|Poland|"
    "Czechia|China|Thailand|Serbia|Montenegro|Bulgaria|Switzerland|Austria|Sweden|Norway|"
    "Canada|India|Egypt|Vietnam|Indonesia|Japan|South Korea|Greece|Portugal|Ireland|Belgium"
).split("|")
HOUR_WEIGHTS = np.array(
    [2.2, 1.4, 1.0, 0.8, 0.7, 0.9, 1.6, 2.6, 3.6, 4.5, 5.1, 5.2]
    + [5.0, 6.0, 6.2, 6.0, 5.8, 5.6, 5.4, 5.3, 5.2, 4.9, 4.2, 3.2]
)
# Fixed shapes within the cells the calibration leaves as one group.
HOUR_SHAPE = 0.2 * np.cos((np.arange(24) - 13) / 24 * 2 * np.pi)
WEEKDAY_SHAPE = np.array([0.0, 0.06, 0.03, 0.0, -0.02, -0.07, 0.0])

BROWSE_ACTIONS = [  # action, category, weight without intent, weight with intent
    ("view_card", "card_web", 0.22, 0.24),
    ("view_new_card", "card_web", 0.12, 0.14),
    ("go_to_car_card", "card_web", 0.08, 0.12),
    ("photos_view", "card_web", 0.04, 0.09),
    ("gallery_open", "card_web", 0.02, 0.05),
    ("showed_number_ads", "card_web", 0.03, 0.01),
    ("sub_landing", "sub_page_view", 0.10, 0.08),
    ("sub_view_cars_click", "sub_page_view", 0.04, 0.07),
    ("sub_car_page", "sub_page_view", 0.03, 0.04),
    ("sub_faq_click", "sub_page_view", 0.01, 0.01),
    ("search_form_region", "search_form", 0.05, 0.03),
    ("search_form_search_btn", "search_form", 0.04, 0.03),
    ("search_form_change_brand", "search_form", 0.03, 0.02),
    ("quiz_show", "quiz", 0.03, 0.01),
    ("start_chat", "chat", 0.02, 0.02),
    ("main_banner_click", "main_page", 0.04, 0.01),
    ("listing_ads", "listing", 0.05, 0.02),
    ("sort_by_price", "listing", 0.02, 0.01),
    ("filter_open", "listing", 0.03, 0.01),
]
RARE_CATEGORIES = (
    "sub_button_click sap_search_form auth profile favorites compare credit trade_in "
    "insurance header footer menu scroll video reviews dealer map notifications share "
    "calculator test_drive subscription_terms documents payment promo app_download cookies "
    "feedback error_page onboarding stories filters sorting pagination city_select phone "
    "whatsapp telegram email_form news blog partners careers legal"
).split()
RARE_VERBS = ["click", "open", "show", "close", "submit", "select"]
RARE_HIT_SHARE = 0.08  # of non-target hits, spread over the rare categories
TARGET_CHAIN = ["sub_car_claim_click", "sub_car_claim_submit_click", "sub_submit_success"]
TARGET_STARTS = [
    "sub_car_claim_click",
    "sub_open_dialog_click",
    "sub_call_number_click",
    "sub_callback_submit_click",
    "sub_custom_question_submit_click",
    "sub_car_request_submit_click",
]
CHAIN_LENGTH_P = [0.28, 0.33, 0.39]
CAR_MODELS = [
    "volkswagen/polo",
    "skoda/rapid",
    "kia/rio",
    "hyundai/solaris",
    "skoda/octavia",
    "toyota/camry",
    "kia/sportage",
    "mercedes-benz/e-klasse",
    "bmw/x5",
    "haval/jolion",
]
HIT_REFERER_MAIN = "HbolMJUevblAbkHClEQa"
EVENT_LABEL_MAIN = "KclpemfoHstknWHFiLit"
NULL = np.array(None, dtype=object)  # an empty CSV field, for np.where


@dataclass
class GenerateSummary:
    """What one run wrote."""

    n_sessions: int
    n_hits: int
    n_converted: int
    seconds: float
    bayes_auc_expected: float


def _tokens(rng: np.random.Generator, n: int, length: int = 20) -> list[str]:
    letters = np.array(list(string.ascii_letters))
    return ["".join(row) for row in letters[rng.integers(0, 52, size=(n, length))]]


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def _pick(rng: np.random.Generator, p: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    cum = np.cumsum(np.asarray(p, dtype=np.float64))
    return np.minimum(np.searchsorted(cum / cum[-1], rng.random(n)), len(cum) - 1)


@dataclass
class _Vocab:
    """Hashed tokens, long tails and the unpublished per-token effects, fixed by the seed."""

    sources: np.ndarray
    source_p: np.ndarray
    source_fx: np.ndarray
    mediums: np.ndarray
    organic_p: np.ndarray  # over mediums, organic ones only
    paid_p: np.ndarray
    campaigns: np.ndarray
    campaign_p: np.ndarray
    campaign_fx: np.ndarray
    adcontents: np.ndarray
    adcontent_p: np.ndarray
    adcontent_fx: np.ndarray
    keywords: np.ndarray
    keyword_p: np.ndarray
    keyword_fx: np.ndarray
    browsers: np.ndarray
    browser_p: np.ndarray
    brands: np.ndarray
    brand_p: np.ndarray
    models: np.ndarray
    screens: np.ndarray
    screen_p: np.ndarray
    cities: np.ndarray
    city_p: np.ndarray
    city_fx: np.ndarray
    countries: np.ndarray
    country_p: np.ndarray
    labels: np.ndarray
    referers: np.ndarray
    actions: np.ndarray
    categories: np.ndarray
    plain_p: np.ndarray  # action weights without intent
    keen_p: np.ndarray  # with intent


def _obj(values: Sequence[Any]) -> np.ndarray:
    return np.array(list(values), dtype=object)


def _vocab(seed: int) -> _Vocab:
    rng = np.random.default_rng([seed, 1])
    named_share = sum(s for _, s in SOURCES)
    n_tail = 293 - len(SOURCES)
    source_p = np.r_[[s for _, s in SOURCES], _zipf(n_tail, 1.1) * (1 - named_share)]
    source_fx = np.r_[np.zeros(len(SOURCES)), rng.normal(0, 0.5, n_tail)]

    mediums = [m for m, _ in ORGANIC] + [m for m, _ in PAID] + RARE_MEDIUMS
    organic_p = np.r_[[s for _, s in ORGANIC], np.zeros(len(PAID) + len(RARE_MEDIUMS))]
    rare_share = 0.002
    paid_p = np.r_[
        np.zeros(len(ORGANIC)), [s for _, s in PAID], _zipf(len(RARE_MEDIUMS), 1.2) * rare_share
    ]

    campaigns = ["LTuZkdKfxRGVceoWkVyg", "FTjNLDyTrXaWYgZymFkV"] + _tokens(rng, 410)
    campaign_p = np.r_[0.25, 0.12, _zipf(410, 1.15) * 0.63]
    campaign_fx = np.r_[0.0, 0.0, rng.normal(0, 1.0, 410)]
    adcontent_p = _zipf(286, 1.25)
    adcontent_fx = rng.normal(0, 0.7, 286)
    keywords = ["aXQzDWsJuGXeBXexNHjc"] + _tokens(rng, 1218)
    keyword_p = np.r_[0.08, _zipf(1218, 0.9) * 0.92]
    keyword_fx = np.r_[0.0, rng.normal(0, 0.5, 1218)]

    browsers = [b for b, _ in BROWSERS] + RARE_BROWSERS
    browser_p = np.r_[[s for _, s in BROWSERS], _zipf(len(RARE_BROWSERS), 1.3) * 0.002]
    brand_tail = RARE_BRANDS + _names(rng, 205 - 12 - len(RARE_BRANDS), "{}")
    brands = [b for b, _ in MOBILE_BRANDS] + brand_tail
    brand_p = np.r_[[s for _, s in MOBILE_BRANDS], _zipf(len(brand_tail), 1.2) * 0.02]

    sizes = np.unique(
        np.c_[rng.integers(240, 2600, 9000) // 2 * 2, rng.integers(320, 1600, 9000) // 2 * 2],
        axis=0,
    )
    rare_screens = [f"{w}x{h}" for w, h in sizes[rng.permutation(len(sizes))[:5020]]]
    screens = MOBILE_SCREENS + DESKTOP_SCREENS + TABLET_SCREENS + rare_screens
    screen_p = _zipf(len(rare_screens), 0.9)

    extra = _names(rng, 2548 - len(CITIES) - 1, "{}sk")
    cities = [c for c, _ in CITIES] + extra
    rest = 1 - sum(s for _, s in CITIES)
    city_p = np.r_[[s for _, s in CITIES], _zipf(len(extra), 0.75) * rest]
    city_fx = np.r_[np.zeros(len(CITIES)), rng.normal(0, 0.4, len(extra))]
    countries = COUNTRIES + _names(rng, 166 - 1 - len(COUNTRIES), "{}ia")

    names = [a[0] for a in BROWSE_ACTIONS]
    cats = [a[1] for a in BROWSE_ACTIONS]
    plain = [a[2] for a in BROWSE_ACTIONS]
    keen = [a[3] for a in BROWSE_ACTIONS]
    rare_w: list[float] = []
    for i, cat in enumerate(RARE_CATEGORIES):
        verbs = RARE_VERBS[: 4 + (i % 2) + (i % 5 == 0)]
        for verb in verbs:
            names.append(f"{cat}_{verb}")
            cats.append(cat)
            rare_w.append(1.0 / (1 + i) ** 0.6 / (1 + RARE_VERBS.index(verb)))
    rare = np.asarray(rare_w) / sum(rare_w)
    base = 1 - RARE_HIT_SHARE
    plain_p = np.r_[np.asarray(plain) / sum(plain) * base, rare * RARE_HIT_SHARE]
    keen_p = np.r_[np.asarray(keen) / sum(keen) * base, rare * RARE_HIT_SHARE / 2]
    return _Vocab(
        sources=_obj([s for s, _ in SOURCES] + _tokens(rng, n_tail)),
        source_p=source_p / source_p.sum(),
        source_fx=source_fx,
        mediums=_obj(mediums),
        organic_p=organic_p / organic_p.sum(),
        paid_p=paid_p / paid_p.sum(),
        campaigns=_obj(campaigns),
        campaign_p=campaign_p / campaign_p.sum(),
        campaign_fx=campaign_fx,
        adcontents=_obj(_tokens(rng, 286)),
        adcontent_p=adcontent_p,
        adcontent_fx=adcontent_fx,
        keywords=_obj(keywords),
        keyword_p=keyword_p / keyword_p.sum(),
        keyword_fx=keyword_fx,
        browsers=_obj(browsers),
        browser_p=browser_p / browser_p.sum(),
        brands=_obj(brands),
        brand_p=brand_p / brand_p.sum(),
        models=_obj(_tokens(rng, 104)),
        screens=_obj(screens),
        screen_p=screen_p,
        cities=_obj(cities),
        city_p=city_p / city_p.sum(),
        city_fx=city_fx,
        countries=_obj(countries),
        country_p=_zipf(len(countries), 1.1),
        labels=_obj(_tokens(rng, 400)),
        referers=_obj(_tokens(rng, 60)),
        actions=_obj(names),
        categories=_obj(cats),
        plain_p=plain_p,
        keen_p=keen_p / keen_p.sum(),
    )


def _names(rng: np.random.Generator, count: int, pattern: str) -> list[str]:
    """Return count distinct made-up names."""
    names: dict[str, None] = {}
    while len(names) < count:
        names[pattern.format(_syllables(rng))] = None
    return list(names)


def _syllables(rng: np.random.Generator) -> str:
    parts = ["ka", "ro", "vel", "mi", "tor", "za", "lin", "ne", "dor", "sa", "vi", "ko", "ma"]
    size = 2 + int(rng.integers(0, 3))
    return "".join(parts[i] for i in rng.integers(0, len(parts), size)).capitalize()


def _days() -> tuple[np.ndarray, np.ndarray]:
    """Every day with sessions and its share of them."""
    days = [
        FIRST_DAY + timedelta(days=i)
        for i in range((LAST_DAY - FIRST_DAY).days + 1)
        if FIRST_DAY + timedelta(days=i) != MISSING_DAY
    ]
    ramp = np.linspace(0.75, 1.35, len(days))
    weekday = np.array([1.05, 1.02, 1.0, 1.0, 0.98, 0.95, 0.97])
    w = ramp * weekday[[d.weekday() for d in days]]
    coarse = np.array([d < COARSE_UNTIL for d in days])
    w[coarse] *= COARSE_SHARE / w[coarse].sum()
    w[~coarse] *= (1 - COARSE_SHARE) / w[~coarse].sum()
    return np.array(days, dtype=object), w


# The published groupings. Each is a partition of the sessions into cells; a cell with
# a published rate keeps it, the cells without one share the rest of the conversions.
PARTITIONS: tuple[str, ...] = (
    "medium",
    "device",
    "source",
    "campaign",
    "keyword",
    "visit",
    "hour",
    "weekday",
    "period",
    "geo",
)


def _cell_targets(overall_social_share: float, mvfhs_share: float) -> dict[str, list[float]]:
    nan = float("nan")
    other_social = (
        pub.SOCIAL_RATE * overall_social_share
        - pub.SOURCE_RATES["MvfHsxITijuriZxsqZqt"] * mvfhs_share
    ) / max(overall_social_share - mvfhs_share, 1e-9)
    return {
        "medium": [*pub.MEDIUM_RATES.values(), nan],
        "device": [
            nan,
            pub.DEVICE_RATES["tablet"],
            pub.ORGANIC_DESKTOP_RATE,
            pub.PAID_DESKTOP_RATE,
        ],
        "source": [*pub.SOURCE_RATES.values(), other_social, nan],
        "campaign": [*pub.CAMPAIGN_RATES.values(), nan],
        "keyword": [*pub.KEYWORD_RATES.values(), pub.KEYWORD_MISSING_RATE, nan],
        "visit": [*pub.VISIT_RATES.values(), nan],
        "hour": [*pub.HOUR_RATES.values(), nan],
        "weekday": [*pub.WEEKDAY_RATES.values(), nan],
        "period": [pub.COARSE_RATE, nan],
        "geo": [pub.ABROAD_RATE, *pub.CITY_RATES.values(), nan],
    }


@dataclass
class _Sessions:
    columns: dict[str, Any]
    coarse: np.ndarray
    cells: dict[str, np.ndarray]  # partition -> cell index of each session
    shape: np.ndarray  # fixed log-odds terms within cells
    hidden: np.ndarray  # unpublished per-token log-odds terms
    start_ts: np.ndarray  # unix seconds


def _clients(rng: np.random.Generator, n: int) -> tuple[np.ndarray, int]:
    """Give each of n sessions a client; client sizes follow a power law."""
    k = np.arange(1, MAX_VISIT_NUMBER + 1)
    size_p = k**-CLIENT_SIZE_EXPONENT
    sizes = 1 + _pick(rng, size_p, int(n / 1.2) + 16)
    end = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    sizes = sizes[:end]
    sizes[-1] -= int(sizes.sum()) - n
    client = np.repeat(np.arange(len(sizes)), sizes)
    return client[rng.permutation(n)], len(sizes)


def _sessions(rng: np.random.Generator, v: _Vocab, n: int) -> _Sessions:
    days, day_p = _days()
    day_idx = _pick(rng, day_p, n)
    day = days[day_idx]
    coarse = np.array([d < COARSE_UNTIL for d in day])
    hour = _pick(rng, HOUR_WEIGHTS, n)
    hour = np.where(coarse & (rng.random(n) < NOON_ARTEFACT), 12, hour)
    minute = np.where(coarse, 0, rng.integers(0, 60, n))
    second = np.where(coarse, 0, rng.integers(0, 60, n))
    epoch = date(1970, 1, 1)
    day_ts = np.array([(d - epoch).days * 86400 for d in day], dtype=np.int64)
    ts = day_ts + hour * 3600 + minute * 60 + second - MSK_OFFSET_S
    weekday = np.array([d.weekday() for d in day])

    # Clients: a client's sessions share its device and place; visit_number counts its
    # visits in time order (a few clients had visited before the export begins).
    client, n_clients = _clients(rng, n)
    order = np.lexsort((ts, client))
    first_of_client = np.r_[True, client[order][1:] != client[order][:-1]]
    group_start = np.maximum.accumulate(np.where(first_of_client, np.arange(n), 0))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start
    earlier = np.where(rng.random(n_clients) < 0.03, rng.geometric(0.25, n_clients), 0)
    visit_number = np.minimum(1 + rank + earlier[client], MAX_VISIT_NUMBER)
    client_first_ts = np.empty(n_clients, dtype=np.int64)
    client_first_ts[client[order][first_of_client]] = ts[order][first_of_client]
    back_s = np.where(earlier > 0, rng.integers(3600, 90 * 86400, n_clients), 0)
    client_first_ts -= back_s + rng.integers(0, 2, n_clients)
    client_int = rng.integers(10_000_000, 2_147_483_647, n_clients)

    c_dev = _pick(rng, [d[1] for d in DEVICES], n_clients)
    c_brand = _pick(rng, v.brand_p, n_clients)
    c_browser = _pick(rng, v.browser_p, n_clients)
    c_city = _pick(rng, v.city_p, n_clients)
    c_russia = rng.random(n_clients) < 0.968
    c_country = _pick(rng, v.country_p, n_clients)
    c_screen_roll = rng.random(n_clients)
    c_screen_rare = _pick(rng, v.screen_p, n_clients)
    dev = c_dev[client]
    desktop, tablet = dev == 1, dev == 2

    organic_p = np.where(
        desktop, DESKTOP_ORGANIC, (pub.ORGANIC_SHARE - 0.197 * DESKTOP_ORGANIC) / 0.803
    )
    organic = rng.random(n) < organic_p
    med = np.where(organic, _pick(rng, v.organic_p, n), _pick(rng, v.paid_p, n))
    src = _pick(rng, v.source_p, n)
    camp = _pick(rng, v.campaign_p, n)
    camp_null = rng.random(n) < pub.NULL_SHARE["utm_campaign"]
    adc = _pick(rng, v.adcontent_p, n)
    adc_null = rng.random(n) < pub.NULL_SHARE["utm_adcontent"]
    kw = _pick(rng, v.keyword_p, n)
    kw_null = rng.random(n) < pub.NULL_SHARE["utm_keyword"]

    browser = v.browsers[c_browser[client]]
    safari = np.isin(browser, ["Safari", "Safari (in-app)"])
    brand_idx = c_brand[client]
    # Safari runs on Apple devices; Apple phones mostly run Safari.
    brand_idx = np.where(safari, 0, np.where(brand_idx == 0, 1, brand_idx))
    brand = np.where(desktop, NULL, v.brands[brand_idx])
    rare_os = _obj(OS_FOR_RARE)[rng.integers(0, len(OS_FOR_RARE), n)]
    os_new = np.where(
        desktop,
        np.where(
            safari,
            "Macintosh",
            _obj(["Windows", "Linux", "(not set)"])[_pick(rng, [0.92, 0.05, 0.03], n)],
        ),
        np.where(brand == "Apple", "iOS", np.where(rng.random(n) < 0.002, rare_os, "Android")),
    )
    device_os = np.where(coarse | (rng.random(n) < 0.003), NULL, os_new)
    common = np.where(
        desktop,
        _obj(DESKTOP_SCREENS)[rng.integers(0, len(DESKTOP_SCREENS), n_clients)[client]],
        np.where(
            tablet,
            _obj(TABLET_SCREENS)[rng.integers(0, len(TABLET_SCREENS), n_clients)[client]],
            _obj(MOBILE_SCREENS)[rng.integers(0, len(MOBILE_SCREENS), n_clients)[client]],
        ),
    )
    n_common = len(MOBILE_SCREENS) + len(DESKTOP_SCREENS) + len(TABLET_SCREENS)
    screens = np.where(
        c_screen_roll[client] < 0.12, v.screens[n_common + c_screen_rare[client]], common
    )
    bad = rng.random(n)
    screens = np.where(bad < 0.003, "0x0", np.where(bad > 0.9995, "(not set)", screens))
    russia = c_russia[client]
    city_idx = c_city[client]
    abroad_city = _obj([f"{c} City" for c in v.countries])[c_country[client]]
    city = np.where(
        russia, v.cities[city_idx], np.where(rng.random(n) < 0.2, "(not set)", abroad_city)
    )
    country = np.where(russia, "Russia", v.countries[c_country[client]])
    model = np.where(rng.random(n) < 0.009, v.models[rng.integers(0, 104, n)], NULL)
    medium = v.mediums[med]
    source = v.sources[src]

    medium_cells = list(pub.MEDIUM_RATES)
    source_cells = list(pub.SOURCE_RATES)
    social = np.isin(source, pub.SOCIAL_SOURCES)
    campaign = np.where(camp_null, NULL, v.campaigns[camp])
    keyword = np.where(kw_null, NULL, v.keywords[kw])
    vb = np.select(
        [visit_number == 1, visit_number == 2, visit_number == 3, visit_number == 4],
        [0, 1, 2, 3],
        np.where((visit_number >= 6) & (visit_number <= 10), 4, 5),
    )
    cells = {
        "medium": _cells(medium, medium_cells),
        "device": np.select([dev == 0, dev == 2, desktop & organic], [0, 1, 2], 3),
        "source": np.where(
            np.isin(source, source_cells),
            _cells(source, source_cells),
            np.where(social, len(source_cells), len(source_cells) + 1),
        ),
        "campaign": _cells(campaign, list(pub.CAMPAIGN_RATES)),
        "keyword": np.where(kw_null, 1, np.where(keyword == "aXQzDWsJuGXeBXexNHjc", 0, 2)),
        "visit": vb,
        "hour": np.select([hour == 6, hour == 13], [0, 1], 2),
        "weekday": np.select([weekday == 0, weekday == 6], [0, 1], 2),
        "period": np.where(coarse, 0, 1),
        "geo": np.where(
            ~russia,
            0,
            np.where(
                np.isin(city, list(pub.CITY_RATES)), 1 + _cells(city, list(pub.CITY_RATES)), 4
            ),
        ),
    }
    shape = (
        HOUR_SHAPE[hour]
        + WEEKDAY_SHAPE[weekday]
        + np.where(vb == 5, 0.15 * np.log(np.maximum(visit_number, 5) / 5), 0.0)
    )
    hidden = (
        v.source_fx[src]
        + np.where(camp_null, 0.0, v.campaign_fx[camp])
        + np.where(adc_null, 0.0, v.adcontent_fx[adc])
        + np.where(kw_null, 0.0, v.keyword_fx[kw])
        + np.where(russia, v.city_fx[city_idx], 0.0)
    )
    visit_date = _obj([d.isoformat() for d in days])[day_idx]
    visit_time = [f"{h:02d}:{m:02d}:{s:02d}" for h, m, s in zip(hour, minute, second, strict=True)]
    big = rng.integers(10**17, 9 * 10**18, n, dtype=np.int64)
    cols: dict[str, Any] = {
        "session_id": [f"{b}.{t}.{t}" for b, t in zip(big, ts, strict=True)],
        "client_id": [
            f"{c}.{f}" for c, f in zip(client_int[client], client_first_ts[client], strict=True)
        ],
        "visit_date": visit_date,
        "visit_time": visit_time,
        "visit_number": visit_number,
        "utm_source": np.where(rng.random(n) < 0.00005, NULL, source),
        "utm_medium": medium,
        "utm_campaign": campaign,
        "utm_adcontent": np.where(adc_null, NULL, v.adcontents[adc]),
        "utm_keyword": keyword,
        "device_category": _obj([d[0] for d in DEVICES])[dev],
        "device_os": device_os,
        "device_brand": brand,
        "device_model": model,
        "device_screen_resolution": screens,
        "device_browser": browser,
        "geo_country": country,
        "geo_city": city,
    }
    return _Sessions(cols, coarse, cells, shape, hidden, ts)


def _cells(values: np.ndarray, named: list[str]) -> np.ndarray:
    """Index of each value in named, len(named) for anything else."""
    lookup = {name: i for i, name in enumerate(named)}
    return np.fromiter(
        (lookup.get(x, len(named)) for x in values), dtype=np.int64, count=len(values)
    )


@dataclass
class _Effects:
    """Fitted log-odds of every cell and the scale of the unpublished effects."""

    cells: dict[str, np.ndarray]
    hidden_scale: float
    bayes_auc: float

    def logit(self, s: _Sessions) -> np.ndarray:
        out = s.shape + self.hidden_scale * s.hidden
        for name, idx in s.cells.items():
            out = out + self.cells[name][idx]
        return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _log_odds(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def expected_auc(p: np.ndarray) -> float:
    """ROC-AUC of p against outcomes drawn from p, in expectation (ties ignored)."""
    ps = np.sort(p)
    neg = 1.0 - ps
    below = np.cumsum(neg) - neg
    pos_total, neg_total = ps.sum(), neg.sum()
    return float((ps * below).sum() / (pos_total * neg_total - (ps * neg).sum()))


def _fit_cells(
    s: _Sessions, scale: float, start: dict[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    n = len(s.shape)
    social = s.cells["source"] == len(pub.SOURCE_RATES)
    mvfhs = s.cells["source"] == list(pub.SOURCE_RATES).index("MvfHsxITijuriZxsqZqt")
    targets = _cell_targets(float((social | mvfhs).mean()), float(mvfhs.mean()))
    sizes = {
        k: np.bincount(idx, minlength=len(targets[k])).astype(float) for k, idx in s.cells.items()
    }
    resolved: dict[str, np.ndarray] = {}
    for k, rates in targets.items():
        t = np.asarray(rates, dtype=float)
        known = ~np.isnan(t)
        rest = (pub.CONVERSION * n - (sizes[k][known] * t[known]).sum()) / max(
            sizes[k][~known].sum(), 1.0
        )
        resolved[k] = np.where(known, t, max(rest, 0.003))
    theta = {k: (start[k].copy() if start else np.full(len(t), -3.6)) for k, t in resolved.items()}
    base = s.shape + scale * s.hidden
    logit = base + sum(theta[k][idx] for k, idx in s.cells.items())
    for _ in range(25):
        for k, idx in s.cells.items():
            p = _sigmoid(logit)
            current = np.bincount(idx, weights=p, minlength=len(theta[k])) / np.maximum(sizes[k], 1)
            step = np.where(sizes[k] > 0, _log_odds(resolved[k]) - _log_odds(current), 0.0)
            theta[k] += step
            logit += step[idx]
    return theta


@lru_cache(maxsize=4)
def _effects(seed: int) -> _Effects:
    """Fit the cell effects and the hidden scale on a pilot sample of the seed."""
    v = _vocab(seed)
    s = _sessions(np.random.default_rng([seed, 2]), v, PILOT_SESSIONS)
    lo, hi = 0.0, 3.0
    theta = None
    auc = 0.0
    for _ in range(14):
        mid = (lo + hi) / 2
        theta = _fit_cells(s, mid, theta)
        p = _sigmoid(s.shape + mid * s.hidden + sum(theta[k][idx] for k, idx in s.cells.items()))
        auc = expected_auc(p)
        if auc < pub.BAYES_AUC:
            lo = mid
        else:
            hi = mid
    assert theta is not None
    return _Effects(cells=theta, hidden_scale=(lo + hi) / 2, bayes_auc=round(auc, 4))


def _hit_count_pmf() -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of 1..MAX_HITS hits, for converting and for other sessions with hits."""
    k = np.arange(1, MAX_HITS + 1)
    head = np.array(list(pub.HITS_PER_SESSION_SHARE.values()))
    tail_share = 1 - head.sum()
    # hits beyond six: 7 + floor(lognormal) with the published mean of 9.1 over all
    head_mean = float((np.arange(1, 7) * head).sum())
    tail_mean = (pub.HITS_PER_SESSION_MEAN - head_mean) / tail_share - 7 + 0.5
    sigma = 1.05
    mu = np.log(tail_mean) - sigma**2 / 2
    j = np.arange(0, MAX_HITS - 6 + 1)
    cdf = ndtr((np.log(np.maximum(j, 1e-12)) - mu) / sigma) * (j > 0)
    tail = np.diff(cdf)
    tail /= tail.sum()
    target = np.r_[head, tail_share * tail][: len(k)]
    target /= target.sum()
    # converting sessions browse longer: 2 + floor(lognormal), about 22 hits on average
    conv_cdf = ndtr((np.log(np.maximum(np.arange(0, MAX_HITS), 1e-12)) - 2.75) / 0.95)
    conv = np.r_[0.0, np.diff(conv_cdf)]
    conv /= conv.sum()
    c = pub.CONVERSION_WITH_HITS
    other = np.clip(target - c * conv, 0, None)
    return conv / conv.sum(), other / other.sum()


def _hit_counts(rng: np.random.Generator, converted: np.ndarray) -> np.ndarray:
    conv_p, other_p = _hit_count_pmf()
    n = len(converted)
    no_hits = rng.random(n) < pub.NO_HIT_SHARE / (1 - pub.CONVERSION)
    counts = np.where(converted, 1 + _pick(rng, conv_p, n), 1 + _pick(rng, other_p, n))
    return np.where(~converted & no_hits, 0, counts).astype(np.int64)


def _hits(
    rng: np.random.Generator, v: _Vocab, s: _Sessions, converted: np.ndarray, intent: np.ndarray
) -> dict[str, Any]:
    counts = _hit_counts(rng, converted)
    total = int(counts.sum())
    n = len(counts)
    sess = np.repeat(np.arange(n), counts)
    starts = np.cumsum(counts) - counts
    pos = np.arange(total) - starts[sess]  # 0-based position in its session

    # Where the first target hit falls, and how long its chain is.
    target_pos = np.where(converted, (rng.beta(2.0, 1.6, n) * (counts - 1)).astype(np.int64), -1)
    chain = np.where(converted, _pick(rng, CHAIN_LENGTH_P, n) + 1, 0)
    chain = np.minimum(chain, counts - np.maximum(target_pos, 0))
    offset = pos - target_pos[sess]
    is_target = converted[sess] & (offset >= 0) & (offset < chain[sess])

    keen = intent[sess] & ((target_pos[sess] < 0) | (pos < target_pos[sess]))
    browse = np.where(keen, _pick(rng, v.keen_p, total), _pick(rng, v.plain_p, total))
    action = v.actions[browse]
    category = v.categories[browse]
    first_kind = np.where(rng.random(n) < 0.6, 0, _pick(rng, [1] * 6, n))
    target_name = np.where(
        offset == 0,
        _obj(TARGET_STARTS)[first_kind[sess]],
        np.where(
            first_kind[sess] == 0, _obj(TARGET_CHAIN)[np.clip(offset, 0, 2)], "sub_submit_success"
        ),
    )
    action = np.where(is_target, target_name, action)
    category = np.where(is_target, "sub_submit", category)

    # hit_number increases with gaps, and stays within 1..MAX_HITS
    gaps = 1 + rng.integers(1, 4, total) * (rng.random(total) < 0.3)
    gaps[starts[counts > 0]] = 1
    cum = np.cumsum(gaps)
    before = np.concatenate(([0], cum))[starts]  # safe when the last session has no hits
    hit_number = cum - np.repeat(before, counts)
    last = np.zeros(n, dtype=np.int64)
    last[counts > 0] = hit_number[starts[counts > 0] + counts[counts > 0] - 1]
    hit_number = np.where(last[sess] > MAX_HITS, pos + 1, hit_number)

    # time on site: a pause before each hit, longer for a visitor with intent
    pause = rng.lognormal(np.where(keen, 9.5, 8.8), 1.1)
    pause[starts[counts > 0]] = 0.0
    cum_t = np.cumsum(pause)
    elapsed = cum_t - np.repeat(np.concatenate(([0.0], cum_t))[starts], counts)
    hit_time = np.where(s.coarse[sess], np.nan, np.round(elapsed))

    card = category == "card_web"
    cars = _obj(CAR_MODELS)[rng.integers(0, len(CAR_MODELS), total)]
    hexes = [f"{x:08x}" for x in rng.integers(0, 2**32, total)]
    path = np.where(
        card,
        [
            f"sberauto.com/cars/all/{c}/{h}?utm_source_initial="
            for c, h in zip(cars, hexes, strict=True)
        ],
        np.where(
            np.char.startswith(action.astype(str), "sub_"),
            "podpiska.sberauto.com/",
            "sberauto.com/cars?city=1&city=18&rental_car=rental_only",
        ),
    )
    referer_roll = rng.random(total)
    referer = np.where(
        referer_roll < pub.NULL_SHARE["hit_referer"],
        NULL,
        np.where(
            referer_roll < 0.399 + 0.601 * pub.TOP_REFERER_SHARE,
            HIT_REFERER_MAIN,
            v.referers[rng.integers(0, len(v.referers), total)],
        ),
    )
    label_roll = rng.random(total)
    label = np.where(
        label_roll < pub.NULL_SHARE["event_label"],
        NULL,
        np.where(
            label_roll < 0.239 + pub.TOP_LABEL_SHARE,
            EVENT_LABEL_MAIN,
            v.labels[rng.integers(0, len(v.labels), total)],
        ),
    )
    # a hit's date is its own: a visit that passes midnight has hits on the next day
    hit_ts = s.start_ts[sess] + MSK_OFFSET_S + np.nan_to_num(hit_time) // 1000
    hit_day = (hit_ts // 86400).astype(np.int64)
    first_day = int(hit_day.min()) if total else 0
    day_names = _obj(
        [
            (date(1970, 1, 1) + timedelta(days=first_day + i)).isoformat()
            for i in range(int(hit_day.max()) - first_day + 1 if total else 0)
        ]
    )
    return {
        "session_id": _obj(s.columns["session_id"])[sess],
        "hit_date": day_names[hit_day - first_day] if total else _obj([]),
        "hit_time": hit_time,
        "hit_number": hit_number,
        "hit_type": np.full(total, "event", dtype=object),
        "hit_referer": referer,
        "hit_page_path": path,
        "event_category": category,
        "event_action": action,
        "event_label": label,
        "event_value": np.full(total, None, dtype=object),
    }


def _table(
    cols: Mapping[str, Any], names: Sequence[str], types: dict[str, pa.DataType]
) -> pa.Table:
    arrays = []
    for name in names:
        values = cols[name]
        typ = types.get(name, pa.string())
        if typ == pa.string():
            arrays.append(pa.array(list(values), type=pa.string()))
        else:
            arrays.append(pa.array(values, type=typ, from_pandas=True))
    return pa.Table.from_arrays(arrays, names=list(names))


def generate(
    out_dir: Path,
    n_sessions: int,
    seed: int,
    *,
    progress: bool = True,
    chunk_sessions: int = 100_000,
) -> GenerateSummary:
    """Write ga_sessions.csv, ga_hits.csv and truth.csv for n_sessions into out_dir."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    v = _vocab(seed)
    effects = _effects(seed)
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    n_hits = n_conv = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_sessions, unit="session", desc="generate")
    with (
        (out_dir / "ga_sessions.csv").open("wb") as f_sessions,
        (out_dir / "ga_hits.csv").open("wb") as f_hits,
        (out_dir / "truth.csv").open("wb") as f_truth,
    ):
        f_sessions.write((",".join(SESSION_COLUMNS) + "\n").encode())
        f_hits.write((",".join(HIT_COLUMNS) + "\n").encode())
        f_truth.write(b"session_id,p_convert\n")
        for k, first in enumerate(range(0, n_sessions, chunk_sessions)):
            n = min(chunk_sessions, n_sessions - first)
            rng = np.random.default_rng([seed, 100 + k])
            s = _sessions(rng, v, n)
            p = _sigmoid(effects.logit(s))
            converted = rng.random(n) < p
            intent = np.where(converted, rng.random(n) < 0.6, rng.random(n) < 0.06)
            hits = _hits(rng, v, s, converted, intent)
            # A few hits lose their session row, as in the real export.
            keep = rng.random(n) >= pub.ORPHAN_SHARE
            session_cols = {c: _obj(s.columns[c])[keep] for c in SESSION_COLUMNS}
            session_cols["visit_number"] = np.asarray(s.columns["visit_number"])[keep]
            pacsv.write_csv(
                _table(session_cols, SESSION_COLUMNS, {"visit_number": pa.int64()}),
                f_sessions,
                options,
            )
            pacsv.write_csv(
                _table(hits, HIT_COLUMNS, {"hit_time": pa.float64(), "hit_number": pa.int64()}),
                f_hits,
                options,
            )
            truth = pa.table(
                {
                    "session_id": pa.array(session_cols["session_id"].tolist()),
                    "p_convert": pa.array(np.round(p[keep], 6)),
                }
            )
            pacsv.write_csv(truth, f_truth, options)
            n_hits += len(hits["session_id"])
            n_conv += int(converted[keep].sum())
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    return GenerateSummary(
        n_sessions=n_sessions,
        n_hits=n_hits,
        n_converted=n_conv,
        seconds=round(time.perf_counter() - started, 2),
        bayes_auc_expected=effects.bayes_auc,
    )
