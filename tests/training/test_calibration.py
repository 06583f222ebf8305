"""Calibration fits and figures on data whose true calibration is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from artifact.calibration import Calibration
from training.calibration import (
    MIN_OUTCOMES,
    expected_calibration_error,
    fit_level,
    fit_platt,
)
from training.refit import recent_rows, refit_rounds


def _draw(n: int, slope: float, intercept: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    margin = rng.normal(-3.0, 1.0, n)
    p = 1 / (1 + np.exp(-(slope * margin + intercept)))
    return margin, (rng.random(n) < p).astype(np.int8)


def test_platt_recovers_the_slope_and_intercept_that_made_the_outcomes() -> None:
    margin, y = _draw(400_000, slope=0.7, intercept=-0.8)
    slope, intercept = fit_platt(margin, y)
    assert slope == pytest.approx(0.7, abs=0.03)
    assert intercept == pytest.approx(-0.8, abs=0.1)


def test_the_level_fit_makes_predictions_sum_to_the_outcomes() -> None:
    margin, y = _draw(100_000, slope=1.0, intercept=-0.7)  # converts at half the rate
    b = fit_level(margin, y, slope=1.0)
    p = Calibration(slope=1.0, intercept=b).apply(margin)
    assert p.sum() == pytest.approx(y.sum(), rel=1e-6)
    assert b == pytest.approx(-0.7, abs=0.08)


def test_the_level_fit_holds_where_probabilities_are_tiny() -> None:
    # A steep slope and low margins: a plain Newton step overshoots to absurd intercepts.
    margin, y = _draw(5_000, slope=1.0, intercept=0.0, seed=3)
    b = fit_level(margin * 0.01 - 8.0, y, slope=2.7)
    assert np.isfinite(b) and abs(b) < 100
    p = Calibration(slope=2.7, intercept=b).apply(margin * 0.01 - 8.0)
    assert p.sum() == pytest.approx(y.sum(), rel=1e-6)


def test_calibration_moves_the_level_and_keeps_the_order() -> None:
    margin = np.linspace(-8, 2, 1001)
    cal = Calibration(slope=0.8, intercept=-0.6)
    p = cal.apply(margin)
    assert (np.diff(p) > 0).all()
    assert Calibration().apply(np.array([0.0, 50_000.0, -50_000.0])).tolist() == [0.5, 1.0, 0.0]


def test_a_slope_outside_its_bounds_or_a_non_finite_intercept_is_refused() -> None:
    for bad in ({"slope": 0.0}, {"slope": -1.0}, {"slope": 9.0}, {"intercept": float("nan")}):
        with pytest.raises(ValueError, match="calibration slope"):
            Calibration(**bad)


def test_too_few_outcomes_is_a_clear_error() -> None:
    y = np.zeros(1000, dtype=np.int8)
    y[: MIN_OUTCOMES - 1] = 1
    with pytest.raises(ValueError, match="too few to calibrate"):
        fit_platt(np.zeros(1000), y)


def test_ece_is_zero_when_calibrated_and_the_gap_when_not() -> None:
    p = np.linspace(0.01, 0.1, 1000)
    assert expected_calibration_error(p, p) == pytest.approx(0.0)
    assert expected_calibration_error(p * 2, p) == pytest.approx(p.mean())


def test_refit_rounds_scale_with_the_rows_and_stay_within_bounds() -> None:
    assert refit_rounds(100, 1_250_000, 1_000_000, cap=2000) == 125
    assert refit_rounds(100, 900, 1000, cap=2000) == 100  # never fewer than early stopping
    assert refit_rounds(1900, 2_000_000, 1_000_000, cap=2000) == 2000


def test_recent_rows_reach_back_until_they_hold_enough_conversions() -> None:
    days = pd.Series(pd.date_range("2021-11-01", periods=30, freq="D").repeat(10))
    y = np.zeros(len(days), dtype=np.int8)
    y[::10] = 1  # one conversion a day
    rows, first = recent_rows(days.dt.strftime("%Y-%m-%d"), y, days=14, min_positives=5)
    assert first == "2021-11-17" and len(rows) == 140
    rows, first = recent_rows(days.dt.strftime("%Y-%m-%d"), y, days=14, min_positives=20)
    assert first == "2021-11-11" and int(y[rows].sum()) == 20
