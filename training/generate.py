"""Synthetic ga_sessions.csv / ga_hits.csv of the real files' shape.

The real exports are not public; this writes files with their columns, types, null
conventions, identifier structure and the published shares and conversion effects
(../shared/data-spec.md), in chunks of sessions so memory stays bounded at any size.

Conversion is drawn from ``p_convert``, a logistic function of the session row's own
fields (written to truth.csv, which training never reads). A visitor's intent, which no
session field shows, enters through the draw and through the hits: a session's hits are
generated knowing its outcome. Before their first target hit, converting sessions (and
a minority of non-converting ones) browse with intent: more car-card views
(``view_card``, ``view_new_card``, ``go_to_car_card``), photo views (``photos_view``,
``gallery_open``), catalogue and landing visits (``sub_view_cars_click``,
``sub_landing``), and longer pauses between hits (time on site).
"""

from __future__ import annotations

import string
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from features.columns import HIT_COLUMNS, SESSION_COLUMNS

FULL_SESSIONS = 1_860_042
FIRST_DAY = date(2021, 5, 19)
LAST_DAY = date(2021, 12, 31)
COARSE_UNTIL = date(2021, 11, 1)  # older records: hour-rounded times, no device_os, no hit_time
TARGET_RATE = 0.02705
MSK_OFFSET_S = 3 * 3600

# source, share, effect on the log-odds
SOURCES = [
    ("ZpYIoDJMcFzVoPFsHGJL", 0.310, 0.02),
    ("fDLlAcSmythWSCVMvqvL", 0.160, 0.22),
    ("kjsLglQLzykiRbcDiGcD", 0.140, -0.12),
    ("MvfHsxITijuriZxsqZqt", 0.100, -0.55),
    ("BHcvLfOaCWvWTykYqHVe", 0.060, 0.18),
    ("bByPQxmDaMXgpHeypKSM", 0.055, 0.62),
    ("QxAxdyPLuQMEcrdZWdWb", 0.012, -0.40),
    ("ISrKoXQCxqqYvAZICvjs", 0.011, -0.40),
    ("IZEXUFLARCUMynmHNBGo", 0.009, -0.40),
    ("PlbkrSYoHuZBWfYjYnfw", 0.008, -0.40),
    ("gVRrcxiDQubJiljoTbGm", 0.007, -0.40),
]
MEDIUMS = [
    ("banner", 0.297, 0.05),
    ("cpc", 0.232, -0.22),
    ("(none)", 0.163, 0.28),
    ("cpm", 0.128, -0.95),
    ("referral", 0.080, 0.70),
    ("organic", 0.034, 0.22),
    ("email", 0.018, -0.72),
    ("push", 0.015, 0.12),
    ("stories", 0.008, -0.3),
    ("blogger_channel", 0.006, -0.2),
    ("smartbanner", 0.005, -0.3),
    ("blogger_stories", 0.004, -0.2),
    ("cpa", 0.003, -0.2),
    ("tg", 0.002, 0.0),
    ("app", 0.002, 0.0),
    ("post", 0.001, 0.0),
    ("smm", 0.001, 0.0),
]
DEVICES = [("mobile", 0.793, -0.05), ("desktop", 0.197, 0.15), ("tablet", 0.010, -0.15)]
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
MOBILE_SCREENS = [
    "414x896",
    "375x812",
    "393x851",
    "360x780",
    "375x667",
    "360x800",
    "412x915",
    "390x844",
    "360x640",
    "428x926",
    "393x873",
    "412x892",
]
DESKTOP_SCREENS = [
    "1920x1080",
    "1536x864",
    "1440x900",
    "1366x768",
    "1280x720",
    "2560x1440",
    "1600x900",
    "1280x800",
    "1680x1050",
]
TABLET_SCREENS = ["768x1024", "810x1080", "800x1280", "1024x1366", "834x1112"]
CITIES = [  # city, share of sessions in Russia, effect
    ("Moscow", 0.447, 0.02),
    ("Saint Petersburg", 0.165, -0.12),
    ("(not set)", 0.040, -0.1),
    ("Yekaterinburg", 0.020, 0.0),
    ("Krasnodar", 0.020, 0.22),
    ("Kazan", 0.017, 0.38),
    ("Samara", 0.015, 0.0),
    ("Nizhny Novgorod", 0.014, 0.0),
    ("Ufa", 0.012, 0.0),
    ("Novosibirsk", 0.012, 0.0),
    ("Rostov-on-Don", 0.010, 0.0),
    ("Chelyabinsk", 0.009, 0.0),
    ("Voronezh", 0.008, 0.0),
    ("Balashikha", 0.008, 0.05),
    ("Podolsk", 0.007, 0.05),
    ("Khimki", 0.006, 0.05),
    ("Mytishchi", 0.006, 0.05),
    ("Korolyov", 0.005, 0.05),
    ("Lyubertsy", 0.005, 0.05),
    ("Tula", 0.005, 0.0),
    ("Perm", 0.005, 0.0),
    ("Krasnoyarsk", 0.005, 0.0),
    ("Volgograd", 0.005, 0.0),
    ("Saratov", 0.004, 0.0),
    ("Tyumen", 0.004, 0.0),
    ("Sochi", 0.004, 0.0),
    ("Yaroslavl", 0.004, 0.0),
]
COUNTRIES = [
    "Ukraine",
    "Belarus",
    "Kazakhstan",
    "United States",
    "Germany",
    "Uzbekistan",
    "Turkey",
    "Armenia",
    "Georgia",
    "Kyrgyzstan",
]
HOUR_WEIGHTS = np.array(
    [
        2.2,
        1.4,
        1.0,
        0.8,
        0.7,
        0.9,
        1.6,
        2.6,
        3.6,
        4.5,
        5.1,
        5.5,
        5.8,
        6.0,
        6.2,
        6.0,
        5.8,
        5.6,
        5.4,
        5.3,
        5.2,
        4.9,
        4.2,
        3.2,
    ]
)
HOUR_EFFECT = 0.2 * np.cos((np.arange(24) - 13) / 24 * 2 * np.pi)  # high at 13h, low at 01h
WEEKDAY_EFFECT = np.array([0.12, 0.06, 0.03, 0.0, -0.02, -0.07, -0.12])

BROWSE_ACTIONS = [  # action, category, weight without intent, weight with intent
    ("view_card", "card_web", 0.22, 0.24),
    ("view_new_card", "card_web", 0.12, 0.14),
    ("go_to_car_card", "card_web", 0.08, 0.12),
    ("photos_view", "card_web", 0.04, 0.09),
    ("gallery_open", "card_web", 0.02, 0.05),
    ("sub_landing", "sub_page_view", 0.10, 0.08),
    ("sub_view_cars_click", "sub_page_view", 0.04, 0.07),
    ("search_form_region", "search_form", 0.05, 0.03),
    ("search_form_search_btn", "search_form", 0.04, 0.03),
    ("search_form_change_brand", "search_form", 0.03, 0.02),
    ("sub_car_page", "sub_page_view", 0.03, 0.04),
    ("quiz_show", "quiz", 0.03, 0.01),
    ("start_chat", "chat", 0.02, 0.02),
    ("showed_number_ads", "card_web", 0.03, 0.01),
    ("main_banner_click", "main_page", 0.04, 0.01),
    ("listing_ads", "listing", 0.05, 0.02),
    ("sort_by_price", "listing", 0.02, 0.01),
    ("filter_open", "listing", 0.03, 0.01),
    ("sub_faq_click", "sub_page_view", 0.01, 0.01),
]
TARGET_CHAIN = ["sub_car_claim_click", "sub_car_claim_submit_click", "sub_submit_success"]
TARGET_STARTS = [
    "sub_car_claim_click",
    "sub_open_dialog_click",
    "sub_call_number_click",
    "sub_callback_submit_click",
    "sub_custom_question_submit_click",
    "sub_car_request_submit_click",
]
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


def _tokens(rng: np.random.Generator, n: int, length: int = 20) -> list[str]:
    letters = np.array(list(string.ascii_letters))
    return ["".join(row) for row in letters[rng.integers(0, 52, size=(n, length))]]


@dataclass
class _Vocab:
    """Hashed tokens and per-token effects, fixed for a seed."""

    sources: list[str]
    source_p: np.ndarray
    source_fx: np.ndarray
    campaigns: list[str]
    campaign_p: np.ndarray
    campaign_fx: np.ndarray
    adcontents: list[str]
    adcontent_p: np.ndarray
    adcontent_fx: np.ndarray
    keywords: list[str]
    keyword_p: np.ndarray
    keyword_fx: np.ndarray
    models: list[str]
    cities: list[str]
    city_p: np.ndarray
    city_fx: np.ndarray
    labels: list[str]
    referers: list[str]


def _zipf(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


def _vocab(seed: int) -> _Vocab:
    rng = np.random.default_rng([seed, 1])
    tail_sources = _tokens(rng, 282)
    named_share = sum(s for _, s, _ in SOURCES)
    sources = [s for s, _, _ in SOURCES] + tail_sources
    source_p = np.r_[[s for _, s, _ in SOURCES], _zipf(282, 1.1) * (1 - named_share)]
    source_fx = np.r_[[f for _, _, f in SOURCES], rng.normal(0, 0.3, 282)]
    campaigns = ["LTuZkdKfxRGVceoWkVyg", "FTjNLDyTrXaWYgZymFkV"] + _tokens(rng, 410)
    campaign_p = np.r_[0.25, 0.12, _zipf(410, 1.2) * 0.63]
    campaign_fx = np.r_[0.38, -0.95, rng.normal(0, 0.45, 410)]
    adcontents = _tokens(rng, 286)
    adcontent_p = _zipf(286, 1.3)
    adcontent_fx = rng.normal(0, 0.35, 286)
    keywords = ["aXQzDWsJuGXeBXexNHjc"] + _tokens(rng, 1218)
    keyword_p = np.r_[0.08, _zipf(1218, 1.0) * 0.92]
    keyword_fx = np.r_[-2.2, rng.normal(0, 0.3, 1218)]
    extra = [f"City-{i}" for i in range(2520)]
    named = [c for c, _, _ in CITIES]
    rest = 1 - sum(s for _, s, _ in CITIES)
    cities = named + extra
    city_p = np.r_[[s for _, s, _ in CITIES], _zipf(len(extra), 1.05) * rest]
    city_fx = np.r_[[f for _, _, f in CITIES], rng.normal(0, 0.15, len(extra))]
    return _Vocab(
        sources=sources,
        source_p=source_p / source_p.sum(),
        source_fx=source_fx,
        campaigns=campaigns,
        campaign_p=campaign_p / campaign_p.sum(),
        campaign_fx=campaign_fx,
        adcontents=adcontents,
        adcontent_p=adcontent_p,
        adcontent_fx=adcontent_fx,
        keywords=keywords,
        keyword_p=keyword_p / keyword_p.sum(),
        keyword_fx=keyword_fx,
        models=_tokens(rng, 104),
        cities=cities,
        city_p=city_p / city_p.sum(),
        city_fx=city_fx,
        labels=_tokens(rng, 400),
        referers=_tokens(rng, 60),
    )


def _pick(rng: np.random.Generator, p: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    cum = np.cumsum(np.asarray(p, dtype=np.float64))
    return np.minimum(np.searchsorted(cum / cum[-1], rng.random(n)), len(cum) - 1)


def _day_weights() -> tuple[list[date], np.ndarray]:
    days = [FIRST_DAY + timedelta(days=i) for i in range((LAST_DAY - FIRST_DAY).days + 1)]
    ramp = np.linspace(0.75, 1.35, len(days))
    weekday = np.array([1.05, 1.02, 1.0, 1.0, 0.98, 0.95, 0.97])
    w = ramp * weekday[[d.weekday() for d in days]]
    # The coarse older period holds about 58% of sessions in the real export.
    coarse = np.array([d < COARSE_UNTIL for d in days])
    w[coarse] *= 0.58 / (w[coarse].sum() / w.sum())
    return days, w / w.sum()


@dataclass
class _Sessions:
    columns: dict[str, object]
    logit: np.ndarray
    coarse: np.ndarray


def _sessions(rng: np.random.Generator, v: _Vocab, n: int) -> _Sessions:
    days, day_p = _day_weights()
    day_idx = _pick(rng, day_p, n)
    coarse = np.array([days[i] < COARSE_UNTIL for i in day_idx])
    hour = _pick(rng, HOUR_WEIGHTS, n)
    minute = np.where(coarse, 0, rng.integers(0, 60, n))
    second = np.where(coarse, 0, rng.integers(0, 60, n))
    day_ts = np.array([(d - date(1970, 1, 1)).days * 86400 for d in days])[day_idx]
    ts = day_ts + hour * 3600 + minute * 60 + second - MSK_OFFSET_S
    weekday = np.array([d.weekday() for d in days])[day_idx]

    visit_number = np.ones(n, dtype=np.int64)
    repeat = rng.random(n) >= 0.74
    visit_number[repeat] = 1 + np.minimum(rng.zipf(1.75, repeat.sum()), 563)
    days_back = np.where(repeat, rng.exponential(12.0, n) * np.log1p(visit_number), 0.0)
    first_ts = ts - (days_back * 86400).astype(np.int64) - (~repeat) * rng.integers(0, 2, n)
    client_int = rng.integers(10_000_000, 2_147_483_647, n)

    src = _pick(rng, v.source_p, n)
    med = _pick(rng, [m[1] for m in MEDIUMS], n)
    camp = _pick(rng, v.campaign_p, n)
    camp_null = rng.random(n) < 0.118
    adc = _pick(rng, v.adcontent_p, n)
    adc_null = rng.random(n) < 0.180
    kw = _pick(rng, v.keyword_p, n)
    kw_null = rng.random(n) < 0.582
    dev = _pick(rng, [d[1] for d in DEVICES], n)
    desktop, tablet = dev == 1, dev == 2
    brand_idx = _pick(rng, [b[1] for b in MOBILE_BRANDS], n)
    apple = (brand_idx == 0) & ~desktop
    browser_idx = _pick(rng, [b[1] for b in BROWSERS], n)
    browser = np.array([b[0] for b in BROWSERS], dtype=object)[browser_idx]
    safari = np.isin(browser, ["Safari", "Safari (in-app)"])
    # Safari runs on Apple devices; keep brand and browser consistent.
    brand_idx = np.where(safari & ~desktop, 0, np.where(apple & ~safari, 1, brand_idx))
    brand = np.array([b[0] for b in MOBILE_BRANDS], dtype=object)[brand_idx]
    brand = np.where(desktop, NULL, brand)
    brand = np.where(desktop & safari & (rng.random(n) < 0.4), "Apple", brand)
    os_new = np.where(
        desktop,
        np.where(
            brand == "Apple",
            "Macintosh",
            np.array(["Windows", "Linux", "(not set)"], dtype=object)[
                _pick(rng, [0.9, 0.05, 0.05], n)
            ],
        ),
        np.where(brand == "Apple", "iOS", "Android"),
    )
    device_os = np.where(coarse | (rng.random(n) < 0.012), NULL, os_new)
    screens = np.where(
        desktop,
        np.array(DESKTOP_SCREENS, dtype=object)[rng.integers(0, len(DESKTOP_SCREENS), n)],
        np.where(
            tablet,
            np.array(TABLET_SCREENS, dtype=object)[rng.integers(0, len(TABLET_SCREENS), n)],
            np.array(MOBILE_SCREENS, dtype=object)[rng.integers(0, len(MOBILE_SCREENS), n)],
        ),
    )
    odd = rng.random(n) < 0.08  # a long tail of other resolutions
    screens = np.where(
        odd,
        [
            f"{w}x{h}"
            for w, h in zip(rng.integers(300, 2600, n), rng.integers(500, 1600, n), strict=True)
        ],
        screens,
    )
    bad = rng.random(n)
    screens = np.where(bad < 0.003, "0x0", np.where(bad > 0.999, "(not set)", screens))
    russia = rng.random(n) < 0.968
    city_idx = _pick(rng, v.city_p, n)
    city = np.array(v.cities, dtype=object)[city_idx]
    country = np.where(
        russia, "Russia", np.array(COUNTRIES, dtype=object)[_pick(rng, _zipf(10, 1.0), n)]
    )
    city = np.where(russia, city, np.where(rng.random(n) < 0.5, "(not set)", "Abroad-city"))
    model = np.where(
        rng.random(n) < 0.009, np.array(v.models, dtype=object)[rng.integers(0, 104, n)], NULL
    )
    organic = np.isin(med, [2, 4, 5])

    logit = (
        np.array([m[2] for m in MEDIUMS])[med]
        + v.source_fx[src]
        + np.where(camp_null, 0.0, v.campaign_fx[camp])
        + np.where(adc_null, 0.0, v.adcontent_fx[adc])
        + np.where(kw_null, 0.12, v.keyword_fx[kw])
        + 0.42 * np.log(visit_number)
        + np.array([d[2] for d in DEVICES])[dev]
        + np.where(desktop, np.where(organic, 0.38, -0.42), 0.0)
        + HOUR_EFFECT[hour]
        + WEEKDAY_EFFECT[weekday]
        + np.where(coarse, 0.24, -0.22)
        + np.where(russia, v.city_fx[city_idx], -0.35)
    )
    visit_date = np.array([d.isoformat() for d in days], dtype=object)[day_idx]
    visit_time = [f"{h:02d}:{m:02d}:{s:02d}" for h, m, s in zip(hour, minute, second, strict=True)]
    big = rng.integers(10**17, 9 * 10**18, n, dtype=np.int64)
    cols: dict[str, object] = {
        "session_id": [f"{b}.{t}.{t}" for b, t in zip(big, ts, strict=True)],
        "client_id": [f"{c}.{f}" for c, f in zip(client_int, first_ts, strict=True)],
        "visit_date": visit_date,
        "visit_time": visit_time,
        "visit_number": visit_number,
        "utm_source": np.where(
            rng.random(n) < 0.00005, None, np.array(v.sources, dtype=object)[src]
        ),
        "utm_medium": np.array([m[0] for m in MEDIUMS], dtype=object)[med],
        "utm_campaign": np.where(camp_null, NULL, np.array(v.campaigns, dtype=object)[camp]),
        "utm_adcontent": np.where(adc_null, NULL, np.array(v.adcontents, dtype=object)[adc]),
        "utm_keyword": np.where(kw_null, NULL, np.array(v.keywords, dtype=object)[kw]),
        "device_category": np.array([d[0] for d in DEVICES], dtype=object)[dev],
        "device_os": device_os,
        "device_brand": brand,
        "device_model": model,
        "device_screen_resolution": screens,
        "device_browser": browser,
        "geo_country": country,
        "geo_city": city,
    }
    return _Sessions(columns=cols, logit=logit, coarse=coarse)


def _hit_counts(rng: np.random.Generator, converted: np.ndarray) -> np.ndarray:
    n = len(converted)
    shape = [0.069, 0.31, 0.137, 0.049, 0.037, 0.022, 0.051]
    k = _pick(rng, shape + [1 - sum(shape)], n)
    tail = 7 + np.minimum(rng.lognormal(2.5, 0.95, n).astype(np.int64), 300)
    counts = np.where(k == 7, tail, k)
    # Converters always have hits, and browse longer.
    conv_counts = 3 + np.minimum(rng.lognormal(2.3, 0.9, n).astype(np.int64), 300)
    return np.where(converted, conv_counts, counts).astype(np.int64)


def _hits(
    rng: np.random.Generator, v: _Vocab, s: _Sessions, converted: np.ndarray, intent: np.ndarray
) -> dict[str, object]:
    counts = _hit_counts(rng, converted)
    total = int(counts.sum())
    sess = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    pos = np.arange(total) - starts[sess]  # 0-based position in its session

    # Where the first target hit falls, and how long its chain is.
    target_pos = np.where(
        converted, (rng.beta(2.0, 1.6, len(counts)) * (counts - 1)).astype(np.int64), -1
    )
    chain = np.where(converted, _pick(rng, [0.35, 0.30, 0.35], len(counts)) + 1, 0)
    chain = np.minimum(chain, counts - np.maximum(target_pos, 0))
    offset = pos - target_pos[sess]
    is_target = converted[sess] & (offset >= 0) & (offset < chain[sess])

    keen = intent[sess] & ((target_pos[sess] < 0) | (pos < target_pos[sess]))
    base_w = [a[2] for a in BROWSE_ACTIONS]
    keen_w = [a[3] for a in BROWSE_ACTIONS]
    browse = np.where(keen, _pick(rng, keen_w, total), _pick(rng, base_w, total))
    names = np.array([a[0] for a in BROWSE_ACTIONS], dtype=object)
    cats = np.array([a[1] for a in BROWSE_ACTIONS], dtype=object)
    action = names[browse]
    category = cats[browse]
    first_kind = np.where(rng.random(len(counts)) < 0.6, 0, _pick(rng, [1] * 6, len(counts)))
    chain_names = np.array(TARGET_CHAIN, dtype=object)
    starts_names = np.array(TARGET_STARTS, dtype=object)
    target_name = np.where(
        offset == 0,
        starts_names[first_kind[sess]],
        np.where(first_kind[sess] == 0, chain_names[np.clip(offset, 0, 2)], "sub_submit_success"),
    )
    action = np.where(is_target, target_name, action)
    category = np.where(is_target, "sub_submit", category)

    gaps = rng.integers(1, 4, total) * (rng.random(total) < 0.35) + 1
    gaps[starts] = 1
    hit_number = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts] - 1, counts)
    pause = rng.exponential(np.where(keen, 22_000.0, 11_000.0))
    pause[starts] = 0.0
    elapsed = np.cumsum(pause) - np.repeat(np.cumsum(pause)[starts], counts)
    hit_time = np.where(s.coarse[sess], np.nan, np.round(elapsed))

    card = np.isin(
        action, ["view_card", "view_new_card", "go_to_car_card", "photos_view", "gallery_open"]
    )
    cars = np.array(CAR_MODELS, dtype=object)[rng.integers(0, len(CAR_MODELS), total)]
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
        referer_roll < 0.399,
        NULL,
        np.where(
            referer_roll < 0.399 + 0.601 * 0.94,
            HIT_REFERER_MAIN,
            np.array(v.referers, dtype=object)[rng.integers(0, len(v.referers), total)],
        ),
    )
    label_roll = rng.random(total)
    label = np.where(
        label_roll < 0.239,
        NULL,
        np.where(
            label_roll < 0.239 + 0.41,
            EVENT_LABEL_MAIN,
            np.array(v.labels, dtype=object)[rng.integers(0, len(v.labels), total)],
        ),
    )
    sid = np.array(s.columns["session_id"], dtype=object)[sess]
    vdate = np.asarray(s.columns["visit_date"], dtype=object)[sess]
    return {
        "session_id": sid,
        "hit_date": vdate,
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


def _intercept(seed: int, v: _Vocab) -> float:
    """Find the intercept that makes the mean p_convert the published conversion rate."""
    rng = np.random.default_rng([seed, 2])
    logit = _sessions(rng, v, 100_000).logit
    lo, hi = -10.0, 0.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if (1 / (1 + np.exp(-(logit + mid)))).mean() < TARGET_RATE:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


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
    intercept = _intercept(seed, v)
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
            p = 1 / (1 + np.exp(-(s.logit + intercept)))
            converted = rng.random(n) < p
            intent = np.where(converted, rng.random(n) < 0.6, rng.random(n) < 0.06)
            hits = _hits(rng, v, s, converted, intent)
            # A few hits lose their session row, as in the real export.
            orphan = rng.random(n) < 0.0013
            keep = ~orphan
            session_cols = {
                c: np.asarray(s.columns[c], dtype=object)[keep] for c in SESSION_COLUMNS
            }
            session_cols["visit_number"] = np.asarray(s.columns["visit_number"])[keep]
            header = options
            pacsv.write_csv(
                _table(session_cols, SESSION_COLUMNS, {"visit_number": pa.int64()}),
                f_sessions,
                header,
            )
            pacsv.write_csv(
                _table(hits, HIT_COLUMNS, {"hit_time": pa.float64(), "hit_number": pa.int64()}),
                f_hits,
                header,
            )
            truth = pa.table(
                {
                    "session_id": pa.array(session_cols["session_id"].tolist()),
                    "p_convert": pa.array(np.round(p[keep], 6)),
                }
            )
            pacsv.write_csv(truth, f_truth, header)
            n_hits += len(hits["session_id"])  # type: ignore[arg-type]
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
    )
