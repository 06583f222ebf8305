"""Fitting and checking calibrations (``artifact.calibration``) of the boosters' log-odds.

Two fits, both maximum likelihood on outcomes by Newton's method:

* ``fit_platt``: slope and intercept (Platt scaling), on rows the booster never fitted;
  the slope says how far the booster's log-odds must shrink or stretch out of time.
* ``fit_level``: the intercept alone at a given slope, on the most recent weeks; it
  moves the level to the one conversion has now, which is what drifts.

And the figures that say whether probabilities are calibrated: the ratio of the sum of
predicted probabilities to the sum of outcomes (or of true probabilities, on generated
data), and the expected calibration error over equal-count score bins.
"""

from __future__ import annotations

import numpy as np

from artifact.calibration import MAX_SLOPE, MIN_SLOPE, level_shift

# Fewer positive (or negative) outcomes than this and no calibration is fitted.
MIN_OUTCOMES = 30


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow at any z


def _check(margin: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(margin, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    if m.shape != t.shape or m.ndim != 1:
        raise ValueError(f"margins {m.shape} and outcomes {t.shape} must be equal 1-d arrays")
    positives = float(t.sum())
    if min(positives, len(t) - positives) < MIN_OUTCOMES:
        raise ValueError(
            f"{int(positives)} positive outcomes in {len(t)} rows: too few to calibrate "
            f"(at least {MIN_OUTCOMES} of each are needed)"
        )
    return m, t


def fit_platt(margin: np.ndarray, y: np.ndarray, *, iterations: int = 50) -> tuple[float, float]:
    """Slope and intercept of the logistic regression of outcomes on log-odds."""
    m, t = _check(margin, y)
    a, b = 1.0, 0.0
    for _ in range(iterations):
        p = _sigmoid(a * m + b)
        w = p * (1.0 - p)
        r = t - p
        grad = np.array([np.dot(r, m), r.sum()])
        hess = np.array([[np.dot(w, m * m), np.dot(w, m)], [np.dot(w, m), w.sum()]])
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        # A damped step: far from the optimum a full Newton step can overshoot.
        step *= min(1.0, 1.0 / max(float(np.abs(step).max()), 1e-12))
        a, b = a + step[0], b + step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(np.clip(a, MIN_SLOPE, MAX_SLOPE)), float(b)


def fit_level(margin: np.ndarray, y: np.ndarray, slope: float) -> float:
    """The intercept that makes ``sigmoid(slope * m + b)`` sum to the outcomes."""
    m, t = _check(margin, y)
    return level_shift(slope * m, t)


def expected_calibration_error(p: np.ndarray, target: np.ndarray, bins: int = 10) -> float:
    """Mean absolute gap between predicted and target rates over equal-count score bins.

    ``target`` is 0/1 outcomes or, on generated data, each row's true probability. Bins
    hold equal numbers of rows (deciles of the score): with a base rate of a few percent,
    equal-width bins would put almost every row into the first one.
    """
    p = np.asarray(p, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    gap = 0.0
    for part in np.array_split(order, bins):
        if len(part):
            gap += len(part) * abs(float(p[part].mean()) - float(target[part].mean()))
    return gap / len(p)


def calibration_figures(p: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Σpredicted / Σtarget and the expected calibration error."""
    total = float(np.sum(target))
    return {
        "sum_predicted_over_target": float(np.sum(p)) / total if total else float("nan"),
        "ece": expected_calibration_error(p, target),
    }
