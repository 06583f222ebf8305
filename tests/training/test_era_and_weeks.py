"""Training's two guards against a drifting level: category encodings judged against the
rate of their weeks, and era features kept out of every other feature's trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from artifact import load_model
from features import SESSION_FEATURES
from features.session import MIN_COUNT
from training.config import ERA_FEATURES, era_constraints
from training.refit import fit_rounds
from training.weeks import week_of, weekly_rates


def test_each_row_expects_its_weeks_rate_shrunk_towards_the_overall_one() -> None:
    # Week of 2021-11-01: 1,000 rows at 10 %; week of 2021-11-08: 1,000 rows at 2 %.
    days = pd.Series(["2021-11-03"] * 1000 + ["2021-11-10"] * 1000)
    y = np.r_[np.arange(1000) % 10 == 0, np.arange(1000) % 50 == 0].astype(np.int8)
    rates = weekly_rates(week_of(days), y, prior_weight=20.0)
    overall = (120 + 1.0) / (2000 + 2.0)
    k = 20.0 / overall
    assert rates[0] == rates[999] == (100 + k * overall) / (1000 + k)
    assert rates[1000] == (20 + k * overall) / (1000 + k)
    assert 0.02 < rates[1000] < overall < rates[0] < 0.10
    # A week with no conversions still expects some.
    assert weekly_rates(week_of(pd.Series(["2021-11-03"] * 10)), np.zeros(10, np.int8))[0] > 0


def test_weeks_run_from_monday_and_unreadable_dates_share_one() -> None:
    days = pd.Series(["2021-11-07", "2021-11-08", "2021-11-14", "2021-11-15", "nonsense", ""])
    week = week_of(days)
    # Sunday the 7th ends a week; Monday the 8th to Sunday the 14th is the next.
    assert week[0] + 1 == week[1] == week[2] and week[3] == week[2] + 1
    assert week[4] == week[5] and week[4] not in week[:4]


def test_era_features_grow_trees_of_their_own() -> None:
    constraints = json.loads(era_constraints(SESSION_FEATURES)["interaction_constraints"])
    era, rest = constraints
    assert sorted(SESSION_FEATURES[i] for i in era) == sorted(ERA_FEATURES)
    assert sorted(era + rest) == list(range(len(SESSION_FEATURES)))
    # Data where an era feature and another interact strongly: constrained trees must
    # still never split on both.
    rng = np.random.default_rng(0)
    n = 20_000
    x = rng.normal(size=(n, len(SESSION_FEATURES))).astype(np.float32)
    os_missing = SESSION_FEATURES.index("os_missing")
    hour = SESSION_FEATURES.index("hour")
    x[:, os_missing] = rng.integers(0, 2, n)
    logit = -2.0 + 2.0 * x[:, os_missing] * x[:, hour]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    booster = fit_rounds({"max_depth": 4}, x, y, 20, SESSION_FEATURES, 1, 0)
    assert _trees_mixing_eras(booster) == []
    used = set(booster.trees_to_dataframe()["Feature"])
    assert used >= {"os_missing", "hour"}
    # Unconstrained, the same data makes trees that mix them: the check above can fail.
    free = xgb.train(
        {"max_depth": 4, "objective": "binary:logistic", "nthread": 1},
        xgb.DMatrix(x, label=y, feature_names=list(SESSION_FEATURES)),
        20,
    )
    mixed = free.trees_to_dataframe()
    mixed = mixed[mixed["Feature"] != "Leaf"].groupby("Tree")["Feature"]
    assert any({"os_missing", "hour"} <= set(used) for _, used in mixed)


def _trees_mixing_eras(booster: xgb.Booster) -> list[int]:
    trees = booster.trees_to_dataframe()
    splits = trees[trees["Feature"] != "Leaf"]
    return [
        int(tree)
        for tree, used in splits.groupby("Tree")["Feature"]
        if len({f in ERA_FEATURES for f in used}) > 1
    ]


def test_the_trained_models_keep_the_era_in_trees_of_their_own(
    trained: dict, model_path: Path
) -> None:
    assert trained["params"]["era_features"] == list(ERA_FEATURES)
    assert trained["params"]["encoding"]["min_count"] == MIN_COUNT
    model = load_model(model_path)
    assert model.in_session_booster is not None
    assert _trees_mixing_eras(model.session_booster) == []
    assert _trees_mixing_eras(model.in_session_booster) == []
