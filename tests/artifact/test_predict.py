"""The direct dense prediction call against XGBoost's own inplace_predict."""

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from artifact import load_model
from artifact.model import predict_dense


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
