"""Per channel, the features that separate converting sessions: the chooser on made-up
contributions, the channel names, and the trained model's block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from artifact import load_model
from contracts.dashboard import DIMENSIONS, NONE_VALUE, channel_value
from features import SESSION_FEATURES
from stream.dashboard import channel_values
from training.config import TrainConfig
from training.dataset import load_dataset
from training.drivers import (
    MIN_CONVERSIONS,
    channel_columns,
    channel_drivers,
    drivers_by_value,
    feature_gaps,
    listed_values,
    sample_rows,
)
from training.train import session_features

SOURCE = SESSION_FEATURES.index("te_utm_source")
HOUR = SESSION_FEATURES.index("hour")


def _made_up(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Contributions, outcomes and channels of 6,000 sessions: in cpc the converting
    sessions owe more to te_utm_source, in organic more to hour; email has too few
    converting sessions, (none) none at all."""
    media = ["cpc"] * 3000 + ["organic"] * 2000 + ["email"] * 600 + [NONE_VALUE] * 400
    medium = np.array(media, dtype=object)
    y = np.zeros(len(medium))
    for value, converting in (("cpc", 150), ("organic", 80), ("email", MIN_CONVERSIONS - 1)):
        rows = np.flatnonzero(medium == value)
        y[rng.choice(rows, size=converting, replace=False)] = 1.0
    phi = rng.normal(0.0, 0.05, size=(len(y), len(SESSION_FEATURES)))
    phi[(medium == "cpc") & (y == 1), SOURCE] += 0.8
    phi[(medium == "organic") & (y == 1), HOUR] += 0.5
    channels = {
        "utm_medium": medium,
        "utm_source": np.full(len(y), "google", dtype=object),
        "utm_campaign": np.array([f"c{k % 3}" for k in range(len(y))], dtype=object),
    }
    return phi, y, channels


def test_the_feature_that_sets_a_value_s_converters_apart_comes_first() -> None:
    phi, y, channels = _made_up(np.random.default_rng(1))
    got = drivers_by_value(phi, y, channels)
    medium = got["utm_medium"]
    assert list(medium) == ["cpc", "organic"]  # email: 19 converting; (none): none
    assert medium["cpc"][0]["feature"] == "te_utm_source"
    assert medium["cpc"][0]["gap"] == pytest.approx(0.8, abs=0.05)
    assert medium["organic"][0]["feature"] == "hour"
    assert medium["organic"][0]["gap"] == pytest.approx(0.5, abs=0.05)
    for top in medium.values():
        assert len(top) == 3
        assert [d["gap"] for d in top] == sorted((d["gap"] for d in top), reverse=True)
        for d in top:
            assert d["gap"] == pytest.approx(d["converting"] - d["others"], abs=2e-4)
    # One source for everything: both features show, te_utm_source (more converters) first.
    assert [d["feature"] for d in got["utm_source"]["google"][:2]] == ["te_utm_source", "hour"]
    assert set(got["utm_campaign"]) == {"c0", "c1", "c2"}
    json.dumps(got)


def test_min_conversions_decides_which_values_are_listed() -> None:
    phi, y, channels = _made_up(np.random.default_rng(2))
    medium = drivers_by_value(phi, y, channels, min_conversions=MIN_CONVERSIONS - 1)
    assert list(medium["utm_medium"]) == ["cpc", "organic", "email"]
    medium = drivers_by_value(phi, y, channels, min_conversions=81)
    assert list(medium["utm_medium"]) == ["cpc"]


def test_a_value_with_no_converting_session_is_left_out_even_with_no_minimum() -> None:
    phi, y, channels = _made_up(np.random.default_rng(3))
    got = drivers_by_value(phi, y, channels, min_conversions=0)
    assert NONE_VALUE not in got["utm_medium"]
    assert feature_gaps(phi[:5], np.zeros(5)) == []
    assert feature_gaps(phi[:5], np.ones(5)) == []  # nothing to compare them with


def test_at_most_the_values_with_the_most_sessions_are_listed() -> None:
    # 20 campaigns, campaign k with 100 + k sessions, 25 of them converting.
    values = np.concatenate([np.full(100 + k, f"camp{k:02d}", dtype=object) for k in range(20)])
    y = np.zeros(len(values))
    for k in range(20):
        y[np.flatnonzero(values == f"camp{k:02d}")[:25]] = 1.0
    listed = listed_values(values, y, MIN_CONVERSIONS, 15)
    assert listed == [f"camp{k:02d}" for k in range(19, 4, -1)]
    # Below the minimum a larger value gives way to a smaller one.
    y[np.flatnonzero(values == "camp19")[:10]] = 0.0
    assert "camp19" not in listed_values(values, y, MIN_CONVERSIONS, 15)
    assert listed_values(values, y, MIN_CONVERSIONS, 15)[-1] == "camp04"


def test_channel_values_are_named_as_the_dashboard_names_them() -> None:
    raw = [None, "", np.nan, "cpc", "a|b|c", "(none)"]
    sessions = pd.DataFrame({dim: raw for dim in DIMENSIONS})
    got = channel_columns(sessions, np.arange(len(raw)))
    expected = [NONE_VALUE, NONE_VALUE, NONE_VALUE, "cpc", "a/b/c", NONE_VALUE]
    for dim in DIMENSIONS:
        assert got[dim].tolist() == expected
    # The worker's own mapping of the rows it gets (JSON: None, never NaN).
    for value in (None, "", "cpc", "a|b|c"):
        row = {dim: value for dim in DIMENSIONS}
        assert channel_values(row)[:3] == [channel_value(value)] * 3
    # Only the asked rows, in their order.
    assert channel_columns(sessions, np.array([4, 3]))["utm_medium"].tolist() == ["a/b/c", "cpc"]


def test_the_sample_is_seeded_sorted_and_only_when_needed() -> None:
    rows = np.arange(10, 1010)
    assert sample_rows(rows, limit=1000) is rows
    a, b = sample_rows(rows, limit=100, seed=5), sample_rows(rows, limit=100, seed=5)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 100 and np.all(np.diff(a) > 0) and np.isin(a, rows).all()


def test_the_trained_model_carries_its_drivers_in_the_artifact_card_and_report(
    trained: dict, model_path: Path, data_dir: Path
) -> None:
    model = load_model(model_path)
    block = model.channel_drivers
    assert block is not None
    assert trained["channel_drivers"] == block
    on_disk = json.loads(model_path.with_name("model_card.json").read_text())
    assert on_disk["channel_drivers"] == block
    assert block["min_conversions"] == MIN_CONVERSIONS
    assert set(block["by_dimension"]) == set(DIMENSIONS)
    window = trained["training_data"]["window"]
    sessions = trained["metrics"]["session_start"]["test_sessions"]
    assert (
        f"test weeks {window['test_from']}..{window['test_to']}, {sessions} sessions"
        in (block["measured_on"])
    )
    top = block["all"]
    assert len(top) == 3 and all(d["gap"] > 0 for d in top)
    assert all(d["feature"] in SESSION_FEATURES for d in top)

    # The same block, recomputed from the test-week rows and the model.
    ds = load_dataset(data_dir)
    days = pd.to_datetime(ds.sessions["visit_date"])
    rows = np.flatnonzero((days >= window["test_from"]).to_numpy())
    every = np.arange(len(ds.sessions))
    x_all, _ = session_features(ds, every, every[:0], TrainConfig())
    channels = channel_columns(ds.sessions, rows)
    span = f"{window['test_from']}..{window['test_to']}"
    again = channel_drivers(model, x_all[rows], ds.converted[rows], channels, span)
    assert again == block
    # Every listed value has the converting sessions it needs.
    y = ds.converted[rows]
    for dim, values in block["by_dimension"].items():
        for value in values:
            assert y[channels[dim] == value].sum() >= MIN_CONVERSIONS
    # With a lower bar some utm_medium values are listed, each with 3 features.
    lower = channel_drivers(model, x_all[rows], y, channels, span, min_conversions=5)
    assert lower["by_dimension"]["utm_medium"]
    assert all(len(t) == 3 for t in lower["by_dimension"]["utm_medium"].values())

    report = Path(trained["model_dir"]) / "report"
    assert json.loads((report / "metrics.json").read_text())["channel_drivers"] == block
    text = (report / "report.md").read_text()
    assert "## What separates converting sessions, by channel" in text
    assert f"| (all) | {top[0]['feature']} ({top[0]['gap']:+.2f})" in text
