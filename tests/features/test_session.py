import math

import numpy as np
import pytest

from features.columns import SESSION_COLUMNS
from features.session import (
    OTHER_CATEGORY,
    SESSION_FEATURES,
    SessionEncoding,
    rows_to_columns,
    session_matrix,
)

ROW = {
    "session_id": "9055434745589932991.1637753792.1637753792",
    "client_id": "2108382700.1637753791",
    "visit_date": "2021-11-24",
    "visit_time": "14:36:32",
    "visit_number": 1,
    "utm_source": "ZpYIoDJMcFzVoPFsHGJL",
    "utm_medium": "banner",
    "utm_campaign": "LEoPHuyFvzoNfnzGgfcd",
    "utm_adcontent": "vCIpmpaGBnIQhyYNkXqp",
    "utm_keyword": "puhZPIYqKXeFPaUviSjo",
    "device_category": "mobile",
    "device_os": "Android",
    "device_brand": "Huawei",
    "device_model": None,
    "device_screen_resolution": "360x720",
    "device_browser": "Chrome",
    "geo_country": "Russia",
    "geo_city": "Zlatoust",
}


def feature(x: np.ndarray, name: str, row: int = 0) -> float:
    return float(x[row, SESSION_FEATURES.index(name)])


@pytest.fixture()
def encoding() -> SessionEncoding:
    rows = [
        dict(ROW, utm_medium=m, geo_city=c)
        for m in ("banner", "cpc", "organic")
        for c in ("Moscow", "Kazan")
    ] * 20
    y = [1 if r["utm_medium"] == "organic" else 0 for r in rows]
    return SessionEncoding.fit(
        rows_to_columns(rows, SESSION_COLUMNS), y, min_count=5, smoothing=1.0
    )


def matrix(rows: list[dict], encoding: SessionEncoding) -> np.ndarray:
    return session_matrix(rows_to_columns(rows, SESSION_COLUMNS), encoding)


def test_one_row_gives_one_vector_of_every_feature(encoding: SessionEncoding) -> None:
    x = matrix([ROW], encoding)
    assert x.shape == (1, len(SESSION_FEATURES))
    assert x.dtype == np.float32


def test_time_date_and_screen_fields_are_parsed(encoding: SessionEncoding) -> None:
    x = matrix([ROW], encoding)
    assert feature(x, "hour") == 14
    assert feature(x, "day_part") == 2
    assert feature(x, "weekday") == 2  # 2021-11-24 was a Wednesday
    assert feature(x, "is_weekend") == 0
    # No feature of the calendar date: a model would fit each past month's level with it
    # and meet months it never saw in serving.
    assert not {"month", "day_of_month"} & set(SESSION_FEATURES)
    assert feature(x, "screen_width") == 360
    assert feature(x, "screen_height") == 720
    assert feature(x, "screen_aspect") == pytest.approx(2.0)
    assert feature(x, "screen_unknown") == 0
    assert feature(x, "days_since_first_visit") == pytest.approx(1 / 86400, abs=1e-6)


@pytest.mark.parametrize("resolution", ["0x0", "(not set)", None, float("nan"), "", "abc"])
def test_unknown_resolutions_are_flagged_not_fatal(encoding, resolution) -> None:
    x = matrix([dict(ROW, device_screen_resolution=resolution)], encoding)
    assert feature(x, "screen_unknown") == 1
    assert math.isnan(feature(x, "screen_width"))


def test_missing_values_and_nan_are_the_same(encoding: SessionEncoding) -> None:
    a = matrix([dict(ROW, utm_keyword=None, device_os=None)], encoding)
    b = matrix([dict(ROW, utm_keyword=float("nan"), device_os="")], encoding)
    np.testing.assert_array_equal(a, b)
    assert feature(a, "keyword_missing") == 1
    assert feature(a, "os_missing") == 1


def test_coarse_time_and_outlier_visit_number(encoding: SessionEncoding) -> None:
    x = matrix([dict(ROW, visit_time="12:00:00", visit_number=564)], encoding)
    assert feature(x, "time_is_rounded") == 1
    assert feature(x, "visit_number") == 100
    assert feature(x, "visit_bucket") == 5
    assert feature(x, "is_first_visit") == 0


def test_geography(encoding: SessionEncoding) -> None:
    x = matrix(
        [dict(ROW, geo_city=c) for c in ("Moscow", "Saint Petersburg", "Khimki", "(not set)")],
        encoding,
    )
    assert feature(x, "is_moscow", 0) == 1
    assert feature(x, "distance_to_moscow_km", 0) == 0
    assert feature(x, "is_saint_petersburg", 1) == 1
    assert 600 < feature(x, "distance_to_moscow_km", 1) < 700
    assert feature(x, "is_moscow_region", 2) == 1
    assert feature(x, "city_unknown", 3) == 1


def test_organic_social_and_interaction(encoding: SessionEncoding) -> None:
    rows = [
        dict(ROW, utm_medium="organic", device_category="desktop"),
        dict(ROW, utm_medium="cpc", utm_source="MvfHsxITijuriZxsqZqt"),
    ]
    x = matrix(rows, encoding)
    assert feature(x, "is_organic", 0) == 1
    assert feature(x, "organic_desktop", 0) == 1
    assert feature(x, "is_social", 0) == 0
    assert feature(x, "is_organic", 1) == 0
    assert feature(x, "is_social", 1) == 1


def test_encoding_ranks_converting_categories_higher(encoding: SessionEncoding) -> None:
    x = matrix([dict(ROW, utm_medium="organic"), dict(ROW, utm_medium="cpc")], encoding)
    assert feature(x, "te_utm_medium", 0) > feature(x, "te_utm_medium", 1)


def test_unseen_category_takes_the_other_bucket(encoding: SessionEncoding) -> None:
    codes = encoding.columns["utm_medium"]
    x = matrix([dict(ROW, utm_medium="never-seen-medium")], encoding)
    assert feature(x, "te_utm_medium") == pytest.approx(codes.log_odds[OTHER_CATEGORY])


def test_batch_equals_rows_one_at_a_time(encoding: SessionEncoding) -> None:
    rows = [
        dict(ROW, visit_number=i, geo_city=c)
        for i, c in zip(range(1, 30), ["Moscow", "Kazan", None] * 10, strict=False)
    ]
    batch = matrix(rows, encoding)
    single = np.vstack([matrix([r], encoding) for r in rows])
    np.testing.assert_array_equal(batch, single)


def test_the_feature_document_is_generated_from_the_code() -> None:
    from pathlib import Path

    from features import IN_SESSION_FEATURES
    from features.__main__ import render

    doc = Path(__file__).parents[2] / "docs" / "features.md"
    assert doc.read_text() == render(), "run: python -m features > docs/features.md"
    for name in IN_SESSION_FEATURES:
        assert f"| `{name}` |" in doc.read_text()


def test_a_value_is_judged_against_the_weeks_it_was_seen_in() -> None:
    # Two campaigns that each convert at their weeks' rate: "early" in weeks at 10 %,
    # "late" in weeks at 5 %. Against the overall rate "late" looks worse; against the
    # rate of its own weeks (``baseline``) it is as good as "early".
    rows = [dict(ROW, utm_campaign="early")] * 400 + [dict(ROW, utm_campaign="late")] * 400
    y = [1 if k % 10 == 0 else 0 for k in range(400)] + [
        1 if k % 20 == 0 else 0 for k in range(400)
    ]
    cols = rows_to_columns(rows, SESSION_COLUMNS)
    plain = SessionEncoding.fit(cols, y).columns["utm_campaign"].log_odds
    assert plain["early"] - plain["late"] > 0.4
    weekly = SessionEncoding.fit(cols, y, baseline=[0.10] * 400 + [0.05] * 400)
    adjusted = weekly.columns["utm_campaign"].log_odds
    assert adjusted["early"] == pytest.approx(adjusted["late"], abs=1e-9)
    # Rows that convert as their weeks do: the smoothing towards the overall rate
    # leaves both at it.
    assert adjusted["early"] == pytest.approx(math.log(3 / 40 / (1 - 3 / 40)), abs=0.02)


def test_without_a_baseline_every_row_expects_the_overall_rate() -> None:
    rows = [dict(ROW, utm_medium=m) for m in ("banner", "cpc", "organic")] * 50
    y = [1 if r["utm_medium"] == "organic" else 0 for r in rows]
    cols = rows_to_columns(rows, SESSION_COLUMNS)
    prior = (sum(y) + 1.0) / (len(y) + 2.0)
    flat = SessionEncoding.fit(cols, y, baseline=[prior] * len(y))
    plain = SessionEncoding.fit(cols, y)
    for medium in ("banner", "cpc", "organic", OTHER_CATEGORY):
        assert flat.columns["utm_medium"].log_odds[medium] == pytest.approx(
            plain.columns["utm_medium"].log_odds[medium], rel=1e-12
        )
    with pytest.raises(ValueError, match="baseline"):
        SessionEncoding.fit(cols, y, baseline=[prior])
