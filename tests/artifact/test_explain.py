"""Reasons add up to the score's log-odds, and show the values the visitor had."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from artifact import load_model
from artifact.explain import (
    EMPTY_VALUE,
    RARE_VALUE,
    explain_in_session,
    explain_rows,
    explain_rows_json,
    explain_session,
    in_session_reasons_written,
    session_reasons_written,
)
from contracts.history import pack_reasons
from features import IN_SESSION_FEATURES, SESSION_FEATURES
from features.columns import SESSION_COLUMNS
from features.hits import STATE_INDEX, empty_state
from features.session import rows_to_columns

# Rows as the real export has them: empty resolutions, (not set), values never seen in
# training, missing utm fields, a visit number as text.
QUIRKS: list[dict[str, object]] = [
    {"device_screen_resolution": "0x0"},
    {"device_screen_resolution": "(not set)", "geo_city": "(not set)"},
    {"utm_source": None, "utm_campaign": None, "device_os": None, "device_brand": None},
    {"utm_medium": "never-seen-medium", "geo_city": "Atlantis"},
    {"visit_number": "3"},
    {"utm_keyword": float("nan"), "device_browser": ""},
]


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


@pytest.fixture(scope="module")
def rows(data_dir: Path) -> list[dict[str, object]]:
    """Generated session rows, the last ones of the export, and each quirk on one of them."""
    df = pd.read_csv(data_dir / "ga_sessions.csv", dtype={"client_id": str}).tail(400)
    base = df.to_dict("records")
    quirky = [dict(base[i], **q) for i, q in enumerate(QUIRKS)]
    return base + quirky


def _sum(r: dict) -> float:
    return r["bias"] + sum(x["contribution"] for x in r["top"]) + r["rest"]


def test_session_reasons_add_up_to_the_scores_log_odds(model_path: Path, rows: list) -> None:
    model = load_model(model_path)
    x = model.session_vectors(rows_to_columns(rows, SESSION_COLUMNS))
    z = _logit(model.score_session_vectors(x))
    for exact in (False, True):
        every = explain_session(model, x, None, exact=exact)
        top5 = explain_session(model, x, exact=exact)
        assert len(every) == len(top5) == len(rows)
        for full, short, want in zip(every, top5, z, strict=True):
            assert [
                r["feature"] for r in sorted(full["top"], key=lambda r: r["feature"])
            ] == sorted(SESSION_FEATURES)
            assert full["rest"] == 0.0 and _sum(full) == pytest.approx(want, abs=1e-4)
            assert full["log_odds"] == pytest.approx(want, abs=1e-5)
            # The event's short form keeps the sum: bias + top + rest, and its top five
            # are the largest five of all.
            assert len(short["top"]) == 5 and short["top"] == full["top"][:5]
            assert _sum(short) == pytest.approx(want, abs=1e-4)
            sizes = [abs(r["contribution"]) for r in full["top"]]
            assert sizes == sorted(sizes, reverse=True)


def test_the_path_attribution_and_treeshap_agree_on_the_top_reasons(
    model_path: Path, rows: list
) -> None:
    model = load_model(model_path)
    x = model.session_vectors(rows_to_columns(rows, SESSION_COLUMNS))
    fast, exact = explain_session(model, x, 3), explain_session(model, x, 3, exact=True)
    pairs = list(zip(fast, exact, strict=True))
    first = [f["top"][0]["feature"] == e["top"][0]["feature"] for f, e in pairs]
    # Both split the same log-odds; the leading reason is mostly the same one.
    assert all(f["log_odds"] == pytest.approx(e["log_odds"], abs=1e-5) for f, e in pairs)
    assert sum(first) / len(first) > 0.6


def test_an_online_shift_moves_the_bias_not_the_contributions(model_path: Path, rows) -> None:
    model = load_model(model_path)
    shifted = model.with_online_shift(-0.7, "v#1")
    x = model.session_vectors(rows_to_columns(rows[:50], SESSION_COLUMNS))
    before, after = explain_session(model, x), explain_session(shifted, x)
    z = _logit(shifted.score_session_vectors(x))
    for b, a, want in zip(before, after, z, strict=True):
        assert a["bias"] == pytest.approx(b["bias"] - 0.7, abs=2e-6)
        assert a["top"] == b["top"] and a["rest"] == b["rest"]
        assert a["log_odds"] == pytest.approx(want, abs=1e-4)


def test_in_session_reasons_add_up_on_hit_states(model_path: Path, rows) -> None:
    model = load_model(model_path)
    assert model.in_session_booster is not None
    x = model.session_vectors(rows_to_columns(rows[:60], SESSION_COLUMNS))
    rng = np.random.default_rng(3)
    states = np.tile(empty_state(), (len(x), 1))
    for name in ("hits", "max_hit_number", "card_views", "photo_views", "search"):
        states[:, STATE_INDEX[name]] = rng.integers(0, 12, len(x))
    states[:, STATE_INDEX["max_hit_time_ms"]] = rng.choice([-1.0, 30_000.0, 900_000.0], len(x))
    z = _logit(model.score_in_session(x, states))
    found = explain_in_session(model, x, states, None)
    for r, want, state in zip(found, z, states, strict=True):
        assert sorted(x["feature"] for x in r["top"]) == sorted(IN_SESSION_FEATURES)
        assert r["log_odds"] == pytest.approx(want, abs=1e-5)
        assert _sum(r) == pytest.approx(want, abs=1e-4)
        hits_seen = next(x for x in r["top"] if x["feature"] == "hits_seen")
        assert hits_seen["value"] == state[STATE_INDEX["hits"]]


def test_values_are_the_visitors_own(model_path: Path, rows) -> None:
    model = load_model(model_path)
    codes = model.encoding.columns["utm_medium"].log_odds
    known = next(r for r in rows if str(r["utm_medium"]) in codes)
    chosen = [
        known,
        dict(known, utm_medium="never-seen-medium", visit_number=7),
        dict(known, utm_medium=None),
        dict(known, device_screen_resolution=None),
    ]
    x = model.session_vectors(rows_to_columns(chosen, SESSION_COLUMNS))
    found = explain_session(model, x, None)

    def value(r, feature):  # type: ignore[no-untyped-def]
        return next(x["value"] for x in r["top"] if x["feature"] == feature)

    assert value(found[0], "te_utm_medium") == known["utm_medium"]
    assert value(found[0], "freq_utm_medium") == known["utm_medium"]
    assert value(found[1], "te_utm_medium") == RARE_VALUE
    assert value(found[1], "visit_number") == 7.0
    assert value(found[2], "te_utm_medium") in (EMPTY_VALUE, RARE_VALUE)
    # A feature the row does not have (no resolution) has no value, not NaN.
    assert value(found[3], "screen_width") is None


def test_the_workers_json_reasons_are_the_very_bytes_of_the_reasons(model_path: Path, rows) -> None:
    # The worker builds its reasons' JSON from pieces; it must be what orjson makes of
    # the reasons the API gives, byte for byte: quirky rows, rows without some values
    # (NaN), hit states, any number of reasons.
    model = load_model(model_path)
    x = model.session_vectors(rows_to_columns(rows, SESSION_COLUMNS))
    holes = x.copy()
    holes[::3, 0] = np.nan
    holes[1::4, -1] = np.nan
    rng = np.random.default_rng(5)
    states = np.tile(empty_state(), (len(x), 1))
    for name in ("hits", "max_hit_number", "card_views", "search"):
        states[:, STATE_INDEX[name]] = rng.integers(0, 15, len(x))
    # The worker writes them with their packed form, as a history entry keeps them.
    for written, want in (
        (session_reasons_written(model, x), explain_session(model, x)),
        (in_session_reasons_written(model, x, states), explain_in_session(model, x, states)),
    ):
        assert [j for j, _ in written] == [orjson.dumps(r) for r in want]
        assert [p for _, p in written] == [pack_reasons(orjson.dumps(r)) for r in want]
    matrix = model.in_session_matrix(holes, states)
    booster, calibration = model.in_session_booster, model.in_session_calibration
    assert booster is not None
    names = IN_SESSION_FEATURES
    for k in (0, 1, 3, 5, 12, None):
        want = explain_rows(booster, calibration, names, matrix, model.encoding, k=k)
        got = explain_rows_json(booster, calibration, names, matrix, model.encoding, k=k)
        assert got == [orjson.dumps(r) for r in want]
        assert [orjson.loads(g) for g in got] == want
    # The rows with a hole show no value for it, in both forms.
    first = explain_rows(booster, calibration, names, matrix[:1], model.encoding, k=None)[0]
    assert next(r for r in first["top"] if r["feature"] == names[0])["value"] is None
    assert explain_rows_json(booster, calibration, names, matrix[:0], model.encoding) == []


def test_the_largest_contributions_come_in_a_stable_sorts_order() -> None:
    # The events' top five are found by argmax passes, not a sort: the same features in
    # the same order as the stable sort, ties (unused features, equal splits) to the
    # feature listed first.
    from artifact.explain import _largest

    rng = np.random.default_rng(3)
    m = np.abs(rng.normal(size=(300, 41)))
    m[::3, :30] = 0.0  # most features unused: ties at zero
    m[1::3, 5] = m[1::3, 9] = m[1::3, 20] = 7.0  # ties at the top
    m[2::3] = np.round(m[2::3], 1)  # ties everywhere
    for k in (0, 1, 3, 5, 8, 12, 41):
        want = np.argsort(-m, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(_largest(m, k), want)
