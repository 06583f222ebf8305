"""Features of a session row, known at session start.

One implementation serves every caller: training passes whole CSV columns, the worker
a micro-batch of events, the API one row. Each column is walked once with plain Python
(dictionary look-ups and small parsers with memoised results), so one row costs a few
tens of microseconds and a million rows a few seconds; nothing here needs pandas.

Categorical columns are encoded with a fitted :class:`SessionEncoding`: frequent
categories keep a smoothed log-odds of conversion and a log frequency, rare ones share
the "other" bucket, and missing values a bucket of their own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache, partial
from typing import Any, TypeVar, cast

import numpy as np

from features.geo import DISTANCE_TO_MOSCOW_KM, MOSCOW, MOSCOW_REGION, RUSSIA, SAINT_PETERSBURG

ORGANIC_MEDIUMS: frozenset[str] = frozenset({"organic", "referral", "(none)"})
SOCIAL_SOURCES: frozenset[str] = frozenset(
    {
        "QxAxdyPLuQMEcrdZWdWb",
        "MvfHsxITijuriZxsqZqt",
        "ISrKoXQCxqqYvAZICvjs",
        "IZEXUFLARCUMynmHNBGo",
        "PlbkrSYoHuZBWfYjYnfw",
        "gVRrcxiDQubJiljoTbGm",
    }
)

# A category seen in fewer training sessions than MIN_COUNT joins the "other" bucket; a
# kept one's rate is smoothed towards the overall rate by SMOOTHING sessions of it. Chosen
# on 300,000 generated sessions (held-out ROC-AUC, three seeds), where the long tails of
# campaigns, ad contents and keywords carry most of what is left to learn.
MIN_COUNT = 10
SMOOTHING = 100.0

CATEGORICAL_COLUMNS: tuple[str, ...] = (
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_adcontent",
    "utm_keyword",
    "device_os",
    "device_brand",
    "device_browser",
    "device_screen_resolution",
    "geo_country",
    "geo_city",
)

NULL_CATEGORY = "__null__"
OTHER_CATEGORY = "__other__"
VISIT_NUMBER_CAP = 100  # a handful of clients revisit hundreds of times; cap the outliers
SCREEN_SIDE_CAP = 10_000  # resolutions beyond this are data errors

# name, meaning, source columns: the documentation table is generated from this list.
BASE_FEATURES: tuple[tuple[str, str, str], ...] = (
    ("visit_number", "visit number, capped at 100", "visit_number"),
    ("log_visit_number", "log(1 + visit_number)", "visit_number"),
    ("is_first_visit", "1 when visit_number is 1", "visit_number"),
    ("visit_bucket", "visit number bucket: 1, 2, 3, 4-5, 6-10, 11+ (0..5)", "visit_number"),
    (
        "days_since_first_visit",
        "days from the client's first visit to this one",
        "client_id, session_id",
    ),
    ("hour", "hour of the visit (0-23)", "visit_time"),
    ("day_part", "night 0-5h, morning 6-11h, day 12-17h, evening 18-23h (0..3)", "visit_time"),
    ("time_is_rounded", "1 when visit_time is a whole hour (older, coarse records)", "visit_time"),
    ("weekday", "day of week, Monday 0", "visit_date"),
    ("is_weekend", "1 on Saturday and Sunday", "visit_date"),
    ("screen_width", "screen width in pixels (NaN when unknown)", "device_screen_resolution"),
    ("screen_height", "screen height in pixels (NaN when unknown)", "device_screen_resolution"),
    ("log_screen_area", "log of width x height", "device_screen_resolution"),
    ("screen_aspect", "height / width", "device_screen_resolution"),
    (
        "screen_unknown",
        "1 when the resolution is empty, 0x0 or (not set)",
        "device_screen_resolution",
    ),
    ("is_mobile", "device_category is mobile", "device_category"),
    ("is_desktop", "device_category is desktop", "device_category"),
    ("is_tablet", "device_category is tablet", "device_category"),
    ("is_organic", "utm_medium is organic, referral or (none)", "utm_medium"),
    ("is_social", "utm_source is one of the six social networks", "utm_source"),
    ("organic_desktop", "organic traffic on a desktop", "utm_medium, device_category"),
    ("campaign_missing", "utm_campaign is empty", "utm_campaign"),
    ("adcontent_missing", "utm_adcontent is empty", "utm_adcontent"),
    ("keyword_missing", "utm_keyword is empty", "utm_keyword"),
    ("os_missing", "device_os is empty", "device_os"),
    ("brand_missing", "device_brand is empty", "device_brand"),
    ("model_missing", "device_model is empty", "device_model"),
    ("is_russia", "geo_country is Russia", "geo_country"),
    ("is_moscow", "geo_city is Moscow", "geo_city"),
    ("is_saint_petersburg", "geo_city is Saint Petersburg", "geo_city"),
    ("is_moscow_region", "a town of the Moscow region (not Moscow itself)", "geo_city"),
    ("city_unknown", "geo_city is empty or (not set)", "geo_city"),
    ("distance_to_moscow_km", "great-circle distance to Moscow (NaN when unknown)", "geo_city"),
)


def _encoded_features() -> tuple[tuple[str, str, str], ...]:
    rows = []
    for col in CATEGORICAL_COLUMNS:
        rows.append(
            (
                f"te_{col}",
                f"smoothed log-odds of conversion of the {col} value, against its weeks' rate",
                col,
            )
        )
        rows.append((f"freq_{col}", f"log share of sessions with the {col} value", col))
    return tuple(rows)


SESSION_FEATURE_TABLE: tuple[tuple[str, str, str], ...] = BASE_FEATURES + _encoded_features()
SESSION_FEATURES: tuple[str, ...] = tuple(name for name, _, _ in SESSION_FEATURE_TABLE)


def is_null(value: object) -> bool:
    """Tell whether a raw value means "empty" (None, NaN or an empty string)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value == ""


def _text(value: object) -> str | None:
    return None if is_null(value) else str(value)


# The parsers' caches keep texts of at most this many characters (no valid date, time
# or resolution is longer), so they are bounded in bytes as well as in entries.
CACHED_TEXT_MAX = 32
T = TypeVar("T")


def _cached(parse: Callable[[str], T], text: str) -> T:
    """Parse through the cache, or around it for a text too long to be valid."""
    if len(text) <= CACHED_TEXT_MAX:
        return parse(text)
    return cast(Callable[[str], T], parse.__wrapped__)(text)  # type: ignore[attr-defined]


@lru_cache(maxsize=4096)
def _parse_date(text: str) -> tuple[float, float]:
    # The weekday only: a feature of the calendar date (its month, its day) would let a
    # model fit each past period's level, which it cannot carry into dates it never saw.
    try:
        d = date.fromisoformat(text[:10])
    except ValueError:
        return (math.nan, math.nan)
    wd = d.weekday()
    return (float(wd), float(wd >= 5))


@lru_cache(maxsize=131072)
def _parse_time(text: str) -> tuple[float, float, float]:
    parts = text.split(":")
    try:
        hour = int(parts[0])
        minute = int(parts[1]) if len(parts) > 1 else 0
        second = int(float(parts[2])) if len(parts) > 2 else 0
    except ValueError:
        return (math.nan, math.nan, math.nan)
    if not (0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 60):
        return (math.nan, math.nan, math.nan)
    return (float(hour), float(hour // 6), float(minute == 0 and second == 0))


@lru_cache(maxsize=16384)
def _parse_resolution(text: str) -> tuple[float, float, float, float, float]:
    nan = math.nan
    width_text, sep, height_text = text.partition("x")
    try:
        width, height = float(width_text), float(height_text)
    except ValueError:
        return (nan, nan, nan, nan, 1.0)
    if not sep or width <= 0 or height <= 0:
        return (nan, nan, nan, nan, 1.0)
    width, height = min(width, SCREEN_SIDE_CAP), min(height, SCREEN_SIDE_CAP)
    return (width, height, math.log(width * height), height / width, 0.0)


def _visit_number(value: object) -> float:
    try:
        n = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    if math.isnan(n) or n < 1:
        return math.nan
    return min(n, VISIT_NUMBER_CAP)


def _visit_bucket(n: float) -> float:
    if math.isnan(n):
        return math.nan
    if n <= 3:
        return n - 1
    if n <= 5:
        return 3.0
    return 4.0 if n <= 10 else 5.0


def _days_since_first_visit(client_id: object, session_id: object) -> float:
    """Read the first-visit and this visit's unix times from the two identifiers."""
    try:
        first = float(str(client_id).rsplit(".", 1)[1])
        this = float(str(session_id).split(".")[1])
    except (IndexError, ValueError):
        return math.nan
    return max(this - first, 0.0) / 86400.0


_FEW_ROWS = 16
DEVICES = ("mobile", "desktop", "tablet")


def _equals(text: str, value: object) -> float:
    return 1.0 if _text(value) == text else 0.0


class _Distinct:
    """A column's distinct values, and which of them each row holds.

    Most columns repeat a few hundred values over thousands of rows: a feature of such a
    column is computed once per distinct value and spread over the rows by index.
    """

    def __init__(self, values: Iterable[object]) -> None:
        values = values if isinstance(values, (list, tuple)) else list(values)
        self.few = values if len(values) <= _FEW_ROWS else None
        if self.few is not None:
            return
        # first[v]: the first row holding v (dict.setdefault mapped in C, no Python frame
        # per row); each row's first row of its value then indexes the result.
        first: dict[object, int] = {}
        self.rows = np.fromiter(map(first.setdefault, values, itertools.count()), dtype=np.intp)
        self.values = list(first)
        self.at = np.fromiter(first.values(), dtype=np.intp, count=len(first))

    def map(self, fn: Callable[[Any], Any]) -> np.ndarray:
        """Apply fn to each distinct value; one row (or one number) per input row."""
        if self.few is not None:  # a handful of rows: per row is cheaper than indexing
            return np.asarray([fn(v) for v in self.few], dtype=np.float64)
        per_value = np.asarray([fn(v) for v in self.values], dtype=np.float64)
        spread = np.empty((len(self.rows), *per_value.shape[1:]), dtype=np.float64)
        spread[self.at] = per_value
        return spread[self.rows]


@dataclass
class CategoryCodes:
    """Encoding of one categorical column: log-odds and log share per kept value."""

    log_odds: dict[str, float]
    log_share: dict[str, float]
    default_log_odds: float
    default_log_share: float

    def encode(self, values: Sequence[object] | _Distinct) -> tuple[np.ndarray, np.ndarray]:
        lo, ls, d_lo, d_ls = (
            self.log_odds,
            self.log_share,
            self.default_log_odds,
            self.default_log_share,
        )
        distinct = values if isinstance(values, _Distinct) else _Distinct(values)

        def codes(v: object) -> tuple[float, float]:
            k = self.key(v)
            return lo.get(k, d_lo), ls.get(k, d_ls)

        both = distinct.map(codes)
        return both[:, 0], both[:, 1]

    @staticmethod
    def key(value: object) -> str:
        return NULL_CATEGORY if is_null(value) else str(value)


def _value_log_odds(
    count: float, positives: float, expected: float, prior: float, smoothing: float, weekly: bool
) -> float:
    """A value's smoothed log-odds of converting: its conversions against those its rows
    were expected to make (``weekly``), shrunk towards the overall rate ``prior`` by
    ``smoothing`` rows' worth of it. Without a baseline the expected conversions are
    ``count * prior``, and the same formula is written as it always was, so that older
    fits stay identical to the last bit."""
    if not weekly:
        p = (positives + smoothing * prior) / (count + smoothing)
    else:
        p = prior * (positives + smoothing * prior) / (expected + smoothing * prior)
        p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


@dataclass
class SessionEncoding:
    """The fitted part of the session features: one :class:`CategoryCodes` per column."""

    columns: dict[str, CategoryCodes] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        cols: Mapping[str, Sequence[object]],
        y: Sequence[int] | np.ndarray,
        *,
        min_count: int = MIN_COUNT,
        smoothing: float = SMOOTHING,
        baseline: Sequence[float] | np.ndarray | None = None,
    ) -> SessionEncoding:
        """Learn the encodings from training rows and their outcomes.

        A value's log-odds are its conversions against the conversions expected of its
        rows, smoothed towards the overall rate. ``baseline`` gives each row's expected
        probability (e.g. the conversion rate of its week, when the level drifts over
        time): a value seen mostly in weeks that converted less is then not taken for a
        worse one. Without it every row expects the overall rate.
        """
        target = np.asarray(y, dtype=np.float64)
        n = len(target)
        prior = (target.sum() + 1.0) / (n + 2.0)
        prior_logit = math.log(prior / (1 - prior))
        expect = np.full(n, prior) if baseline is None else np.asarray(baseline, np.float64)
        if expect.shape != target.shape:
            raise ValueError(f"{len(expect)} baseline rates for {n} rows")
        columns: dict[str, CategoryCodes] = {}
        for col in CATEGORICAL_COLUMNS:
            # Each value's number, in the order values first appear; the sums per value
            # add the rows in their order, as a loop over them would.
            index: dict[str, int] = {}
            codes = np.fromiter(
                (index.setdefault(CategoryCodes.key(v), len(index)) for v in cols[col]),
                dtype=np.int64,
                count=n,
            )
            counts = np.bincount(codes, minlength=len(index)).tolist()
            positives = np.bincount(codes, weights=target, minlength=len(index)).tolist()
            expected = np.bincount(codes, weights=expect, minlength=len(index)).tolist()
            # Rare values share one bucket, so each kept value has enough rows to estimate.
            rare = [i for i, c in enumerate(counts) if c < min_count]
            kept = {
                k: (counts[i], positives[i], expected[i])
                for i, k in enumerate(index)
                if counts[i] >= min_count
            }
            kept[OTHER_CATEGORY] = (
                sum(counts[i] for i in rare),
                sum(positives[i] for i in rare),
                sum(expected[i] for i in rare),
            )

            log_odds = {
                k: _value_log_odds(c, p, e, prior, smoothing, weekly=baseline is not None)
                for k, (c, p, e) in kept.items()
            }
            log_share = {k: math.log((c + 1.0) / (n + 1.0)) for k, (c, _, _) in kept.items()}
            columns[col] = CategoryCodes(
                log_odds=log_odds,
                log_share=log_share,
                default_log_odds=log_odds.get(OTHER_CATEGORY, prior_logit),
                default_log_share=log_share[OTHER_CATEGORY],
            )
        return cls(columns=columns)


def session_matrix(cols: Mapping[str, Sequence[Any]], encoding: SessionEncoding) -> np.ndarray:
    """Compute the session features of many rows, given their columns; (n, F) float32."""
    n = len(cols["session_id"])
    out = np.empty((n, len(SESSION_FEATURES)), dtype=np.float32)
    if n == 0:
        return out
    seen: dict[str, _Distinct] = {}

    def distinct(column: str) -> _Distinct:
        # Several features read one column: find its distinct values once.
        if column not in seen:
            seen[column] = _Distinct(cols[column])
        return seen[column]

    j = 0

    def put(values: Sequence[float] | np.ndarray) -> None:
        nonlocal j
        out[:, j] = values
        j += 1

    visit = [_visit_number(v) for v in cols["visit_number"]]
    put(visit)
    put([math.log1p(v) for v in visit])
    put([1.0 if v == 1 else (math.nan if math.isnan(v) else 0.0) for v in visit])
    put([_visit_bucket(v) for v in visit])
    put(
        [
            _days_since_first_visit(c, s)
            for c, s in zip(cols["client_id"], cols["session_id"], strict=True)
        ]
    )

    nan3 = (math.nan, math.nan, math.nan)
    times = [nan3 if is_null(t) else _cached(_parse_time, str(t)) for t in cols["visit_time"]]
    for i in range(3):
        put([t[i] for t in times])
    nan2 = (math.nan, math.nan)
    dates = distinct("visit_date").map(
        lambda d: nan2 if is_null(d) else _cached(_parse_date, str(d))
    )
    for i in range(2):
        put(dates[:, i])

    unknown_screen = (math.nan, math.nan, math.nan, math.nan, 1.0)
    screens = distinct("device_screen_resolution").map(
        lambda r: unknown_screen if is_null(r) else _cached(_parse_resolution, str(r))
    )
    for i in range(5):
        put(screens[:, i])

    device = {name: distinct("device_category").map(partial(_equals, name)) for name in DEVICES}
    for name in DEVICES:
        put(device[name])
    organic = distinct("utm_medium").map(lambda v: 1.0 if v in ORGANIC_MEDIUMS else 0.0)
    put(organic)
    put(distinct("utm_source").map(lambda v: 1.0 if v in SOCIAL_SOURCES else 0.0))
    put(organic * device["desktop"])
    for col in (
        "utm_campaign",
        "utm_adcontent",
        "utm_keyword",
        "device_os",
        "device_brand",
        "device_model",
    ):
        put(distinct(col).map(lambda v: 1.0 if is_null(v) else 0.0))

    put(distinct("geo_country").map(lambda v: 1.0 if v == RUSSIA else 0.0))
    city = distinct("geo_city")
    put(city.map(lambda v: 1.0 if _text(v) == MOSCOW else 0.0))
    put(city.map(lambda v: 1.0 if _text(v) == SAINT_PETERSBURG else 0.0))
    put(city.map(lambda v: 1.0 if _text(v) in MOSCOW_REGION else 0.0))
    put(city.map(lambda v: 1.0 if _text(v) in (None, "(not set)") else 0.0))
    put(city.map(lambda v: DISTANCE_TO_MOSCOW_KM.get(_text(v) or "", math.nan)))

    for col in CATEGORICAL_COLUMNS:
        log_odds, log_share = encoding.columns[col].encode(distinct(col))
        put(log_odds)
        put(log_share)

    assert j == len(SESSION_FEATURES), "feature table and computation disagree"
    return out


def rows_to_columns(
    rows: Sequence[Mapping[str, Any]], columns: Iterable[str]
) -> dict[str, list[Any]]:
    """Turn row dictionaries (events, API requests) into the columns session_matrix takes."""
    return {c: [r.get(c) for r in rows] for c in columns}
