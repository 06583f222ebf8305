"""The shipped model: the chosen configuration refitted on all the data, then calibrated.

Model selection and the test figures come from boosters fitted on the weeks before the
early-stopping and test windows (``training.train``). That booster is weeks stale when it
is saved and has never seen the latest conversion level. The model that ships is instead:

* refitted on every session, the most recent weeks included, with the chosen parameters
  and a number of trees set by early stopping, scaled by the growth of the training set
  (``refit_rounds``): with more rows each tree can follow the data a little longer before
  it overfits, and the scaling is the usual first-order rule for that;
* calibrated (``training.calibration``): the slope of its log-odds comes from the
  selection booster on the early-stopping weeks it never fitted, the level from the most
  recent days of the data (``recent_rows``), where today's conversion level is.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from artifact.calibration import IDENTITY, Calibration
from features import IN_SESSION_FEATURES, SESSION_FEATURES
from training.calibration import MIN_OUTCOMES, fit_level, fit_platt
from training.config import TrainConfig, era_constraints
from training.dataset import Dataset
from training.snapshots import snapshots

log = logging.getLogger(__name__)


def refit_rounds(best_rounds: int, rows_now: int, rows_then: int, cap: int) -> int:
    """Trees for a refit on rows_now rows, when early stopping chose best_rounds on
    rows_then: scaled by the ratio of rows, at least best_rounds, at most cap."""
    if rows_then <= 0:
        raise ValueError("the early-stopped fit had no rows")
    scaled = math.ceil(best_rounds * max(rows_now, rows_then) / rows_then)
    return max(1, min(scaled, cap))


def fit_rounds(
    params: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    rounds: int,
    names: tuple[str, ...],
    threads: int,
    seed: int,
) -> xgb.Booster:
    """Fit a booster with a fixed number of trees (no early stopping: nothing is held out)."""
    full = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "nthread": threads,
        "seed": seed,
        **params,
        **era_constraints(names),
    }
    d_fit = xgb.QuantileDMatrix(x, label=y, feature_names=list(names))
    return xgb.train(full, d_fit, num_boost_round=rounds, verbose_eval=False)


def recent_rows(
    visit_date: pd.Series, y: np.ndarray, days: int, min_positives: int
) -> tuple[np.ndarray, str]:
    """Rows of the last ``days`` days of the data, reaching back day by day until they
    hold at least ``min_positives`` conversions (small data sets); with their first day."""
    dates = pd.to_datetime(visit_date, errors="coerce")
    day = dates.dt.normalize()
    last = day.max()
    first = last - pd.Timedelta(days=days - 1)
    positives_by_day = pd.Series(y, index=day.to_numpy()).groupby(level=0).sum().sort_index()
    earliest = positives_by_day.index.min()
    while first > earliest and positives_by_day[positives_by_day.index >= first].sum() < (
        min_positives
    ):
        first -= pd.Timedelta(days=1)
    rows = np.flatnonzero((day >= first).to_numpy())
    return rows, f"{first:%Y-%m-%d}"


def margins(booster: xgb.Booster, x: np.ndarray) -> np.ndarray:
    """The booster's log-odds of each row."""
    return np.asarray(booster.inplace_predict(x, predict_type="margin"), dtype=np.float64)


def slope_out_of_time(margin: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """Platt slope on rows the booster never fitted; 1 when they hold too few outcomes."""
    positives = int(np.sum(y))
    if min(positives, len(y) - positives) < MIN_OUTCOMES:
        return 1.0, f"none ({positives} conversions out of time; slope 1)"
    slope, _ = fit_platt(margin, y)
    return slope, f"Platt on {len(y)} rows the booster never fitted ({positives} conversions)"


def level_calibration(
    margin: np.ndarray, y: np.ndarray, slope: float, fitted_on: dict[str, Any]
) -> Calibration:
    """The intercept at a given slope on recent rows; the identity if they hold too few
    conversions to estimate it (noted in ``fitted_on``)."""
    positives = int(np.sum(y))
    if min(positives, len(y) - positives) < MIN_OUTCOMES:
        log.warning(
            "calibration: %d conversions in %d recent rows, too few; none applied",
            positives,
            len(y),
        )
        return Calibration(
            fitted_on={**fitted_on, "rows": len(y), "positives": positives, "applied": False}
        )
    intercept = fit_level(margin, y, slope)
    return Calibration(
        slope=slope,
        intercept=intercept,
        fitted_on={**fitted_on, "rows": int(len(y)), "positives": positives, "applied": True},
    )


def platt_calibration(margin: np.ndarray, y: np.ndarray, fitted_on: dict[str, Any]) -> Calibration:
    """Slope and level both from the same rows (the evaluated model's early-stopping weeks)."""
    slope, source = slope_out_of_time(margin, y)
    cal = level_calibration(margin, y, slope, {**fitted_on, "slope_from": source})
    return cal if cal.fitted_on.get("applied") else IDENTITY


def refit_shipped(
    ds: Dataset,
    x_all: np.ndarray,
    recent_days: tuple[np.ndarray, str],
    cfg: TrainConfig,
    *,
    session: tuple[xgb.Booster, dict[str, Any], int, Calibration],
    in_session: tuple[xgb.Booster, int, Calibration],
    in_x: Any,
) -> tuple[xgb.Booster, xgb.Booster, dict[str, Any]]:
    """Refit both models on all sessions and calibrate them on the recent days.

    Each comes with its evaluated twin (early-stopped on fewer rows) and that twin's
    calibration, whose slope, fitted out of time, the shipped model keeps.
    """
    y = ds.converted
    every = np.arange(len(y))
    recent, recent_from = recent_days
    evaluated, params, fit_rows, evaluated_cal = session
    window = {"window": "most recent days", "from": recent_from}

    def slope_of(cal: Calibration) -> dict[str, Any]:
        return {**window, "slope_from": cal.fitted_on.get("slope_from", "none (slope 1)")}

    rounds = refit_rounds(evaluated.num_boosted_rounds(), len(every), fit_rows, cfg.max_rounds)
    booster = fit_rounds(params, x_all, y, rounds, SESSION_FEATURES, cfg.threads, cfg.seed)
    session_cal = level_calibration(
        margins(booster, x_all[recent]), y[recent], evaluated_cal.slope, slope_of(evaluated_cal)
    )

    in_evaluated, in_fit_rows, in_evaluated_cal = in_session
    snap_all = snapshots(ds, every, cfg)
    in_rounds = refit_rounds(
        in_evaluated.num_boosted_rounds(), len(snap_all.label), in_fit_rows, cfg.max_rounds
    )
    in_booster = fit_rounds(
        cfg.in_session_params,
        in_x(snap_all, x_all),
        snap_all.label,
        in_rounds,
        IN_SESSION_FEATURES,
        cfg.threads,
        cfg.seed,
    )
    all_snapshots = len(snap_all.label)
    del snap_all
    snap_recent = snapshots(ds, recent, cfg, limit=cfg.max_eval_snapshots)
    in_cal = level_calibration(
        margins(in_booster, in_x(snap_recent, x_all)),
        snap_recent.label,
        in_evaluated_cal.slope,
        slope_of(in_evaluated_cal),
    )
    log.info(
        "shipped models: %d and %d trees on all %d sessions; calibrated on the days from %s",
        rounds,
        in_rounds,
        len(every),
        recent_from,
    )
    shipped = {
        "description": (
            "the chosen configuration refitted on every session, the test weeks included, "
            "with the early-stopped number of trees scaled by the growth of its training "
            "rows; probabilities calibrated on the most recent days"
        ),
        "session_start": {
            "trees": rounds,
            "rows": int(len(every)),
            "early_stopped_trees": int(evaluated.num_boosted_rounds()),
            "early_stopped_rows": int(fit_rows),
            "calibration": session_cal.as_dict(),
        },
        "in_session": {
            "trees": in_rounds,
            "rows": all_snapshots,
            "early_stopped_trees": int(in_evaluated.num_boosted_rounds()),
            "early_stopped_rows": int(in_fit_rows),
            "calibration": in_cal.as_dict(),
        },
        "calibrations": (session_cal, in_cal),
    }
    return booster, in_booster, shipped
