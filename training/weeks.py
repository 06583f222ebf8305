"""Weeks and their conversion rates, the baseline the category encodings are judged
against when conversion drifts over the year (``SessionEncoding.fit``)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def week_of(visit_date: pd.Series) -> np.ndarray:
    """Each row's calendar week (weeks from Monday, numbered from 1970; unreadable dates
    share one number of their own)."""
    days = pd.to_datetime(visit_date, errors="coerce").to_numpy(dtype="datetime64[D]")
    return (days.astype(np.int64) + 3) // 7  # 1970-01-01 was a Thursday


def weekly_rates(week: np.ndarray, y: np.ndarray, prior_weight: float = 20.0) -> np.ndarray:
    """Each row's expected conversion: the rate of its week (``week_of``) among these
    rows, shrunk towards the overall rate by ``prior_weight`` conversions' worth of it
    (weeks of a small data set hold a few conversions)."""
    overall = (float(np.sum(y)) + 1.0) / (len(y) + 2.0)
    weeks, of_row = np.unique(week, return_inverse=True)
    n = np.bincount(of_row, minlength=len(weeks)).astype(np.float64)
    pos = np.bincount(of_row, weights=np.asarray(y, np.float64), minlength=len(weeks))
    k = prior_weight / overall
    return np.asarray(((pos + k * overall) / (n + k))[of_row], dtype=np.float64)
