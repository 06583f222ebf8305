"""The knobs of a training run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    """Knobs of one training run."""

    test_days: int = 28  # the last weeks are held out
    early_stop_days: int = 14  # the last weeks of the training window stop boosting
    min_stop_positives: int = 100  # ... reaching back until they hold this many conversions
    folds: int = 5  # out-of-fold category encodings for training rows
    seed: int = 42
    max_rounds: int = 2000
    early_stopping_rounds: int = 50
    max_snapshot_hits: int = 40  # snapshots per session (its first hits)
    max_snapshots: int = 3_000_000  # training snapshots (a random sample beyond this)
    max_eval_snapshots: int = 1_000_000  # early-stopping and test snapshots
    threads: int = 2
    tune_budget_s: float = 120.0  # wall time for the XGBoost parameter search
    tune_max_trials: int = 12
    compare_max_rows: int = 400_000  # rows for the logistic regression and random forest
    compare: bool = True
    calibration_days: int = 14  # the shipped models' level comes from the last days
    min_level_positives: int = 100  # ... reaching back until they hold this many conversions
    hot_share: float = 0.01  # Hot: the top 1 % of recent session-start scores
    warm_share: float = 0.04  # Warm: the next 4 % (``training.tiers``)
    session_params: dict[str, Any] = field(
        default_factory=lambda: {
            "max_depth": 5,
            "eta": 0.05,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "min_child_weight": 20,
            "lambda": 5.0,
        }
    )
    in_session_params: dict[str, Any] = field(
        default_factory=lambda: {
            "max_depth": 6,
            "eta": 0.08,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "min_child_weight": 20,
            "lambda": 5.0,
        }
    )


# Features that say which export a record comes from (older records: no device_os, times
# rounded to the hour); conversion moved with the export, so these carry its level.
ERA_FEATURES = ("time_is_rounded", "os_missing", "te_device_os", "freq_device_os")


def era_constraints(names: Sequence[str]) -> dict[str, str]:
    """XGBoost interaction constraints that keep the era features out of every other
    feature's trees: the era moves the level, it does not make the rest a new model."""
    era = [i for i, n in enumerate(names) if n in ERA_FEATURES]
    rest = [i for i, n in enumerate(names) if n not in ERA_FEATURES]
    return {"interaction_constraints": json.dumps([era, rest])} if era and rest else {}
