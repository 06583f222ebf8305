"""What separates a channel's converting sessions from its others, in the model's terms.

The live page shows, per utm_medium, utm_source and utm_campaign value, its sessions and
its expected and observed conversions. Beside those, the card tells per channel value
which features the shipped session-start model leans on to pick out the sessions that
did convert: for the test-week sessions (a seeded sample of at most ``MAX_SESSIONS``),
each feature's contribution to the score's log-odds (the path attribution of
``artifact.explain``, scaled by the calibration's slope; the bias left out), and per
feature the gap between its mean contribution over the value's converting sessions and
over its other sessions. The three largest gaps are kept.

Only values with at least ``MIN_CONVERSIONS`` converting test-week sessions are listed
(a mean over fewer says little), at most ``MAX_VALUES`` per dimension, those with the
most sessions; ``all`` holds the same for every sampled session. Channel values are
named as the dashboard names them (``contracts.dashboard.channel_value``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from artifact.explain import contributions
from contracts.dashboard import DIMENSIONS, channel_value
from features import SESSION_FEATURES

MAX_SESSIONS = 200_000
MIN_CONVERSIONS = 20
MAX_VALUES = 15
TOP_FEATURES = 3
DECIMALS = 4


def sample_rows(rows: np.ndarray, limit: int = MAX_SESSIONS, seed: int = 0) -> np.ndarray:
    """``rows`` itself, or a seeded sample of ``limit`` of them in their order."""
    if len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def channel_columns(sessions: pd.DataFrame, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The dashboard's channel values of ``rows`` for each dimension: small object
    arrays, kept so that the raw columns can be dropped."""
    out = {}
    for dim in DIMENSIONS:
        raw = sessions[dim].to_numpy()[rows] if dim in sessions else [None] * len(rows)
        out[dim] = np.array([channel_value(v) for v in raw], dtype=object)
    return out


def feature_gaps(phi: np.ndarray, converted: np.ndarray) -> list[dict[str, Any]]:
    """The ``TOP_FEATURES`` features whose mean contribution is highest over the
    converting rows relative to the other rows (empty unless both kinds are present)."""
    conv = np.asarray(converted, dtype=bool)
    if not conv.any() or conv.all():
        return []
    inside = phi[conv].mean(axis=0)
    others = phi[~conv].mean(axis=0)
    gap = inside - others
    # Largest gap first; equal gaps in the order of SESSION_FEATURES.
    order = sorted(range(len(gap)), key=lambda j: (-gap[j], j))[:TOP_FEATURES]
    return [
        {
            "feature": SESSION_FEATURES[j],
            "gap": round(float(gap[j]), DECIMALS),
            "converting": round(float(inside[j]), DECIMALS),
            "others": round(float(others[j]), DECIMALS),
        }
        for j in order
    ]


def listed_values(
    values: np.ndarray, converted: np.ndarray, min_conversions: int, max_values: int
) -> list[str]:
    """The values with at least ``min_conversions`` converting rows, the ``max_values``
    with the most rows, most rows first (ties by name)."""
    names, inverse, counts = np.unique(values.astype(str), return_inverse=True, return_counts=True)
    conversions = np.bincount(inverse, weights=converted, minlength=len(names))
    kept = [k for k in range(len(names)) if conversions[k] >= min_conversions]
    kept.sort(key=lambda k: (-counts[k], names[k]))
    return [str(names[k]) for k in kept[:max_values]]


def drivers_by_value(
    phi: np.ndarray,
    converted: np.ndarray,
    channels: Mapping[str, np.ndarray],
    *,
    min_conversions: int = MIN_CONVERSIONS,
    max_values: int = MAX_VALUES,
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per dimension, per listed value, its top features (``feature_gaps``)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for dim in DIMENSIONS:
        values = np.asarray(channels[dim]).astype(str)
        out[dim] = {}
        for value in listed_values(values, converted, min_conversions, max_values):
            inside = values == value
            top = feature_gaps(phi[inside], converted[inside])
            if top:  # a value whose sessions all converted has nothing to compare
                out[dim][value] = top
    return out


def session_contributions(model: Any, x: np.ndarray) -> np.ndarray:
    """The shipped session-start model's contributions to each row's log-odds, one
    column per session feature (the bias dropped)."""
    phi = contributions(model.session_booster, x)
    return phi[:, :-1] * model.session_calibration.slope


def channel_drivers(
    model: Any,
    x: np.ndarray,
    converted: np.ndarray,
    channels: Mapping[str, np.ndarray],
    span: str,
    *,
    min_conversions: int = MIN_CONVERSIONS,
    max_values: int = MAX_VALUES,
) -> dict[str, Any]:
    """The card's ``channel_drivers`` block for ``model`` (a ConversionModel) on the
    test-week rows ``x`` with their outcomes and channel values; ``span`` names the
    days they come from."""
    y = np.asarray(converted, dtype=np.float64)
    phi = session_contributions(model, x) if len(x) else np.zeros((0, len(SESSION_FEATURES)))
    return {
        "measured_on": (
            f"shipped session-start model, test weeks {span}, {len(y)} sessions "
            f"({int(y.sum())} converting)"
        ),
        "min_conversions": int(min_conversions),
        "by_dimension": drivers_by_value(
            phi, y, channels, min_conversions=min_conversions, max_values=max_values
        ),
        "all": feature_gaps(phi, y),
    }
