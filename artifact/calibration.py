"""Calibration of a booster's log-odds: a monotone map that moves the level, not the order.

A booster's output margin m (log-odds) becomes ``sigmoid(slope * m + intercept)``. With a
positive slope the map is strictly increasing, so the ranking of sessions, and every
ROC-AUC, stays exactly as the booster has it; only the probabilities' level and spread
change. The identity (slope 1, intercept 0) is the uncalibrated booster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A slope outside these bounds means the fit went wrong (too few outcomes, a constant
# score): the fitter refuses it rather than ship a map that flattens or explodes scores.
MIN_SLOPE = 0.2
MAX_SLOPE = 5.0


@dataclass(frozen=True)
class Calibration:
    """``p = sigmoid(slope * margin + intercept)``, with where it was fitted."""

    slope: float = 1.0
    intercept: float = 0.0
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (MIN_SLOPE <= self.slope <= MAX_SLOPE) or not np.isfinite(self.intercept):
            raise ValueError(
                f"calibration slope {self.slope} must be within [{MIN_SLOPE}, {MAX_SLOPE}] "
                f"and the intercept {self.intercept} finite"
            )

    def apply(self, margin: np.ndarray) -> np.ndarray:
        """Map output margins (log-odds) to calibrated probabilities, as float64."""
        z = self.slope * np.asarray(margin, dtype=np.float64) + self.intercept
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow

    def as_dict(self) -> dict[str, Any]:
        """The calibration as the model card shows it."""
        return {"slope": self.slope, "intercept": self.intercept, **self.fitted_on}


IDENTITY = Calibration()


def level_shift(logits: np.ndarray, outcomes: np.ndarray) -> float:
    """The shift d that makes ``sigmoid(logits + d)`` sum to the outcomes.

    The sum grows strictly with d, so bisection finds it, without the overshoot of a
    Newton step where the probabilities are tiny. Outcomes may be 0/1 or probabilities;
    with none (or all) positive, the shift is at its bound (40 log-odds).
    """
    z = np.asarray(logits, dtype=np.float64)
    target = float(np.sum(outcomes))
    if len(z) == 0:
        return 0.0
    lo, hi = -40.0 - float(z.max()), 40.0 - float(z.min())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if float(np.sum(0.5 * (1.0 + np.tanh(0.5 * (z + mid))))) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)
