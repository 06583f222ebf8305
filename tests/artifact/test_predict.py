"""The direct dense prediction call against XGBoost's own inplace_predict."""

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from artifact import load_model
from artifact.model import predict_dense
from features.hits import STATE_FIELDS

# The XGBoost release whose private ctypes hooks artifact/model.py was checked against.
HOOKED_XGBOOST = "3.2.0"


def test_xgboost_is_the_release_the_direct_calls_were_checked_on() -> None:
    import tomllib

    assert xgb.__version__ == HOOKED_XGBOOST, (
        f"xgboost {xgb.__version__} is installed: artifact/model.py calls "
        f"xgboost.core._LIB, _check_call and make_jcargs, checked on {HOOKED_XGBOOST}. Run "
        "the equality tests in this file on the new release, then update the pin in "
        "pyproject.toml and HOOKED_XGBOOST."
    )
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert f"xgboost=={HOOKED_XGBOOST}" in project["project"]["dependencies"]


@pytest.mark.parametrize("rows", [1, 3, 700])
def test_predict_dense_equals_inplace_predict_on_both_boosters(model_path: Path, rows: int) -> None:
    model = load_model(model_path)
    rng = np.random.default_rng(rows)
    for booster in (model.session_booster, model.in_session_booster):
        assert booster is not None
        x = rng.normal(size=(rows, booster.num_features())).astype(np.float32)
        x[rng.random(x.shape) < 0.2] = np.nan  # missing values take the default branch
        expected = booster.inplace_predict(x, validate_features=False)
        got = predict_dense(booster, x)
        assert got.dtype == np.float64 and got.shape == (rows,)
        np.testing.assert_array_equal(got, expected.astype(np.float64))


def test_predict_dense_takes_float64_and_non_contiguous_input() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + rng.normal(size=200) > 0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(x, y), num_boost_round=10
    )
    view = np.asfortranarray(x)[::2]
    np.testing.assert_allclose(
        predict_dense(booster, view),
        booster.inplace_predict(np.ascontiguousarray(view, dtype=np.float32)),
        rtol=0,
        atol=0,
    )


def test_a_wrong_feature_count_is_an_error_not_a_wrong_score(model_path: Path) -> None:
    model = load_model(model_path)
    x = np.zeros((2, model.session_booster.num_features() + 1), dtype=np.float32)
    with pytest.raises(xgb.core.XGBoostError):
        predict_dense(model.session_booster, x)


def test_margins_are_xgboost_margins(model_path: Path) -> None:
    model = load_model(model_path)
    x = np.random.default_rng(1).normal(size=(50, model.session_booster.num_features()))
    expected = model.session_booster.inplace_predict(
        x.astype(np.float32), predict_type="margin", validate_features=False
    )
    np.testing.assert_allclose(
        predict_dense(model.session_booster, x, margin=True), expected, rtol=1e-6
    )


def test_scores_are_the_calibrated_margins_of_both_boosters(model_path: Path) -> None:
    model = load_model(model_path)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, model.session_booster.num_features())).astype(np.float32)
    states = np.abs(rng.normal(size=(40, len(STATE_FIELDS)))).astype(np.float64)
    assert model.in_session_booster is not None
    margins = predict_dense(model.session_booster, x, margin=True)
    expected = model.session_calibration.apply(margins)
    np.testing.assert_allclose(model.score_session_vectors(x), expected, rtol=1e-12)
    # The calibration is not the identity in the trained artifact: it moves the level.
    assert not np.allclose(expected, 1 / (1 + np.exp(-margins)))
    # ... and it keeps the order.
    assert (np.argsort(expected, kind="stable") == np.argsort(margins, kind="stable")).all()
    from features.hits import hit_feature_matrix

    full = np.hstack([x, hit_feature_matrix(states)]).astype(np.float32)
    in_margins = predict_dense(model.in_session_booster, full, margin=True)
    np.testing.assert_allclose(
        model.score_in_session(x, states),
        model.in_session_calibration.apply(in_margins),
        rtol=1e-12,
    )


def test_an_artifact_pickled_before_calibrations_scores_with_the_identity(
    model_path: Path,
) -> None:
    import pickle

    from artifact.calibration import IDENTITY

    model = load_model(model_path)
    state = dict(model.__dict__)
    del state["session_calibration"], state["in_session_calibration"]
    old = object.__new__(type(model))
    old.__dict__.update(state)
    revived = pickle.loads(pickle.dumps(old))
    assert revived.session_calibration is IDENTITY
    x = np.zeros((3, model.session_booster.num_features()), dtype=np.float32)
    np.testing.assert_allclose(
        revived.score_session_vectors(x),
        predict_dense(model.session_booster, x),
        rtol=1e-6,
    )


@pytest.mark.parametrize("rows", [1, 4, 90])
def test_contributions_dense_equal_xgboosts_own(model_path: Path, rows: int) -> None:
    """The direct C calls give what ``Booster.predict(DMatrix, pred_contribs=True)`` gives
    (a new xgboost release that changes them fails here)."""
    from artifact.model import contributions_dense

    model = load_model(model_path)
    rng = np.random.default_rng(rows)
    for booster in (model.session_booster, model.in_session_booster):
        assert booster is not None
        x = rng.normal(size=(rows, booster.num_features())).astype(np.float32)
        x[rng.random(x.shape) < 0.2] = np.nan
        for exact in (False, True):
            want = booster.predict(
                xgb.DMatrix(x, missing=np.nan),
                pred_contribs=True,
                approx_contribs=not exact,
                validate_features=False,
            )
            got = contributions_dense(booster, x, exact=exact)
            assert got.dtype == np.float64 and got.shape == (rows, booster.num_features() + 1)
            np.testing.assert_array_equal(got, want.astype(np.float64))
