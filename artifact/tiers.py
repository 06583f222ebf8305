"""Hot / Warm / Cold: who to call first, from a score's place among recent sessions.

The thresholds are probabilities of the offline calibration, chosen by training as the
score quantiles of recent session starts (``training.tiers``): with the default shares,
Hot is the top 1 % of session-start scores and Warm the next 4 %. A score's tier
compares its log-odds *without* the online shift (``stream.recalibration``): the shift
moves every probability's level when conversion drifts, not the order of sessions, so
the share of traffic in each tier, and the sales team's call volume, stay what they
were chosen to be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contracts.scores import TIER_NAMES

COLD, WARM, HOT = 0, 1, 2


def _logit(p: float) -> float:
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class Tiers:
    """A score is Warm at or above ``warm`` and Hot at or above ``hot`` (probabilities of
    the offline calibration); ``chosen_on`` says how they were chosen, for the card."""

    warm: float
    hot: float
    chosen_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0.0 < self.warm <= self.hot < 1.0):
            raise ValueError(
                f"tier thresholds must satisfy 0 < warm <= hot < 1, got {self.warm}, {self.hot}"
            )

    @property
    def warm_log_odds(self) -> float:
        return _logit(self.warm)

    @property
    def hot_log_odds(self) -> float:
        return _logit(self.hot)

    def codes(self, probabilities: np.ndarray, shift: float = 0.0) -> np.ndarray:
        """The tier (0 cold, 1 warm, 2 hot) of each probability made with an online
        ``shift``: its log-odds less the shift is compared with the thresholds."""
        p = np.asarray(probabilities, dtype=np.float64)
        with np.errstate(divide="ignore"):
            z = np.log(p) - np.log1p(-p) - shift
        return (z >= self.warm_log_odds).astype(np.int8) + (z >= self.hot_log_odds)

    def of(self, probability: float, shift: float = 0.0) -> str:
        """The tier name of one probability made with an online ``shift``: ``codes`` in
        plain floats, a few microseconds where NumPy takes ten (one-row ``/predict`` is
        the API's busiest call)."""
        z = _logit(probability) - shift  # NaN compares false: Cold, as in ``codes``
        return TIER_NAMES[(z >= self.warm_log_odds) + (z >= self.hot_log_odds)]

    def as_dict(self) -> dict[str, Any]:
        """The tiers as the model card shows them."""
        return {"warm": self.warm, "hot": self.hot, **self.chosen_on}


def tier_code(name: str) -> int:
    """The code of a tier name (ValueError for another name)."""
    try:
        return TIER_NAMES.index(name)
    except ValueError:
        raise ValueError(f"tier must be one of {', '.join(TIER_NAMES)}, got {name!r}") from None
