"""The compiled walk gives XGBoost's path attribution, and steps aside where it cannot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
import xgboost as xgb

from artifact import load_model, paths
from artifact.explain import prepare
from artifact.model import contributions_dense
from artifact.paths import (
    PathTable,
    UnsupportedBoosterError,
    _laid_out,
    path_contributions,
    path_table,
    value_rows,
)
from features.columns import SESSION_COLUMNS
from features.hits import STATE_INDEX, empty_state
from features.session import rows_to_columns

# Quirks of the real export, as the explain tests use them.
QUIRKS: list[dict[str, object]] = [
    {"device_screen_resolution": "0x0", "geo_city": "(not set)"},
    {"utm_source": None, "utm_campaign": None, "device_os": None, "device_brand": None},
    {"utm_medium": "never-seen-medium", "visit_number": "3"},
]


@pytest.fixture(scope="module")
def model(model_path: Path):  # type: ignore[no-untyped-def]
    return load_model(model_path)


@pytest.fixture(scope="module")
def session_x(model, data_dir: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    df = pd.read_csv(data_dir / "ga_sessions.csv", dtype={"client_id": str}).tail(300)
    rows = df.to_dict("records")
    rows += [dict(rows[i], **q) for i, q in enumerate(QUIRKS)]
    return model.session_vectors(rows_to_columns(rows, SESSION_COLUMNS))


def _trees(booster: xgb.Booster) -> list[dict]:
    return orjson.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]


def test_the_table_gives_xgboosts_attribution_for_the_session_model(model, session_x) -> None:  # type: ignore[no-untyped-def]
    booster = model.session_booster
    table = path_table(booster)
    assert table is not None, "no table for the project's own model"
    ours = table.contributions(session_x)
    theirs = contributions_dense(booster, session_x)
    assert ours.shape == theirs.shape == (len(session_x), session_x.shape[1] + 1)
    assert np.max(np.abs(ours - theirs)) < 1e-5
    # And they add up to the margin the scores come from.
    margin = booster.inplace_predict(session_x, predict_type="margin")
    assert np.max(np.abs(ours.sum(axis=1) - margin)) < 1e-4


def test_the_table_gives_xgboosts_attribution_for_the_in_session_model(model, session_x) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    states = np.tile(empty_state(), (len(session_x), 1))
    for name in ("hits", "max_hit_number", "card_views", "photo_views", "search"):
        states[:, STATE_INDEX[name]] = rng.integers(0, 12, len(session_x))
    x = model.in_session_matrix(session_x, states)
    booster = model.in_session_booster
    assert path_table(booster) is not None
    assert np.max(np.abs(path_contributions(booster, x) - contributions_dense(booster, x))) < 1e-5


def test_rows_down_every_branch_agree_one_row_at_a_time(model) -> None:  # type: ignore[no-untyped-def]
    booster = model.session_booster
    table = path_table(booster)
    assert table is not None
    rows = value_rows(_trees(booster), table.n_features, n=203, seed=11)
    assert np.isnan(rows).any() and np.isfinite(rows).any()
    whole = table.contributions(rows)  # fifty blocks of four rows, and three alone
    for i in (0, 1, 57, 199, 202):  # a batch of one as the worker often has it
        assert np.array_equal(table.contributions(rows[i : i + 1])[0], whole[i])
    assert np.max(np.abs(whole - contributions_dense(booster, rows))) < 1e-5


def test_an_empty_batch_has_no_rows(model) -> None:  # type: ignore[no-untyped-def]
    booster = model.session_booster
    empty = np.zeros((0, booster.num_features()), dtype=np.float32)
    assert path_contributions(booster, empty).shape == (0, booster.num_features() + 1)


def _fit(params: dict, n: int = 600, m: int = 5) -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, m)).astype(np.float32)
    x[rng.random((n, m)) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) + rng.normal(size=n) > 0).astype(int)
    if params.get("objective") == "multi:softprob":
        y = y + (np.nan_to_num(x[:, 1]) > 0.5)
    booster = xgb.train(
        {"max_depth": 3, "nthread": 1, "objective": "binary:logistic", **params},
        xgb.DMatrix(x, label=y),
        num_boost_round=8,
    )
    return booster, x


def test_a_table_is_checked_and_refused_when_it_differs() -> None:
    booster, x = _fit({})
    table = PathTable(booster)
    assert np.max(np.abs(table.contributions(x) - contributions_dense(booster, x))) < 1e-5
    table.step[int(np.flatnonzero(table.nodes["leaf"])[0])] += 0.01  # one leaf's step off
    with pytest.raises(UnsupportedBoosterError, match="differs"):
        table._check(booster, value_rows(_trees(booster), table.n_features))


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"booster": "dart", "rate_drop": 0.3}, "dart"),
        ({"objective": "multi:softprob", "num_class": 3}, "several outputs"),
    ],
)
def test_boosters_a_table_cannot_stand_for_are_explained_by_xgboost(params, why) -> None:  # type: ignore[no-untyped-def]
    booster, x = _fit(params)
    with pytest.raises(UnsupportedBoosterError, match=why):
        PathTable(booster)
    if why == "dart":  # a single output: the attribution still comes, from XGBoost
        assert path_table(booster) is None
        assert np.array_equal(path_contributions(booster, x), contributions_dense(booster, x))


def test_categorical_splits_are_refused() -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {"a": pd.Categorical(rng.choice(["x", "y", "z"], 400)), "b": rng.normal(size=400)}
    )
    y = (frame["a"] == "x").astype(int) ^ (rng.random(400) < 0.1)
    booster = xgb.train(
        {"max_depth": 2, "nthread": 1, "objective": "binary:logistic"},
        xgb.DMatrix(frame, label=y, enable_categorical=True),
        num_boost_round=3,
    )
    with pytest.raises(UnsupportedBoosterError, match="categorical"):
        PathTable(booster)


def test_rows_of_another_width_are_refused(model) -> None:  # type: ignore[no-untyped-def]
    table = path_table(model.session_booster)
    assert table is not None
    with pytest.raises(ValueError, match="features"):
        table.contributions(np.zeros((2, table.n_features + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="features"):
        table.contributions(np.zeros(table.n_features, dtype=np.float32))


def _tree(**changes: object) -> dict:
    """A tree of three nodes: the root splits feature 1 at 0.5 into two leaves."""
    tree: dict = {
        "left_children": [1, -1, -1],
        "right_children": [2, -1, -1],
        "split_indices": [1, 0, 0],
        "split_conditions": [0.5, -0.2, 0.3],
        "sum_hessian": [4.0, 1.0, 3.0],
        "default_left": [1, 0, 0],
    }
    tree.update(changes)
    return tree


def test_a_tree_is_laid_out_with_each_nodes_step() -> None:
    nodes, step, depth = _laid_out(_tree(), m=3)
    assert depth == 1 and list(nodes["leaf"]) == [0, 1, 1] and nodes["left"][0] == 1
    mean = (-0.2 * 1.0 + 0.3 * 3.0) / 4.0
    assert step.tolist() == pytest.approx([0.0, -0.2 - mean, 0.3 - mean])


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"left_children": [1, -1, 7]}, "bad child"),  # a child out of the tree
        ({"left_children": [1, 0, -1], "right_children": [2, 2, -1]}, "bad child"),  # a cycle
        ({"split_indices": [9, 0, 0]}, "feature 9"),
        ({"sum_hessian": [0.0, 1.0, 3.0]}, "cover"),
        ({"categories_nodes": [0]}, "categorical"),
    ],
)
def test_trees_the_walk_cannot_follow_are_refused(changes: dict, why: str) -> None:
    with pytest.raises(UnsupportedBoosterError, match=why):
        _laid_out(_tree(**changes), m=3)


@pytest.fixture()
def fresh_kernel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The compiled walk looked for in an empty folder of its own, forgotten after."""
    monkeypatch.setattr(paths, "_folders", lambda: [tmp_path / "walk"])
    paths.kernel.cache_clear()
    yield tmp_path / "walk"
    paths.kernel.cache_clear()


def test_the_walk_is_compiled_once_and_kept_by_its_sources_digest(fresh_kernel: Path) -> None:
    assert paths.kernel() is not None
    kept = list(fresh_kernel.glob("paths-*.so"))
    assert len(kept) == 1
    booster, x = _fit({})
    assert (
        np.max(np.abs(PathTable(booster).contributions(x) - contributions_dense(booster, x))) < 1e-5
    )


def test_without_a_compiler_xgboost_explains(
    fresh_kernel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "no-such-compiler")
    assert paths.kernel() is None
    booster, x = _fit({})
    with pytest.raises(UnsupportedBoosterError, match="no compiled walk"):
        PathTable(booster)
    assert path_table(booster) is None
    assert np.array_equal(path_contributions(booster, x), contributions_dense(booster, x))


def test_a_loaded_model_is_prepared_before_its_first_score(model_path: Path) -> None:
    fresh = load_model(model_path)  # boosters of its own, not explained yet
    boosters = (fresh.session_booster, fresh.in_session_booster)
    assert all(id(b) not in paths._TABLES for b in boosters)
    prepare(fresh)
    for booster in boosters:
        held, table = paths._TABLES[id(booster)]
        assert held is booster and table is not None


def test_the_tables_of_many_models_keep_the_newest() -> None:
    boosters = [_fit({"seed": k})[0] for k in range(10)]
    for booster in boosters:
        path_table(booster)
    assert len(paths._TABLES) == 8
    # The two made last, as a model's two boosters are, are both still there.
    assert all(paths._TABLES[id(b)][0] is b for b in boosters[-2:])
