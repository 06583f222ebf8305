"""Choosing the Hot / Warm / Cold thresholds of a trained model (``artifact.tiers``).

The tiers exist to size the sales team's call list, so they are defined by shares of
traffic, not by probabilities picked by hand. With the default shares
(``TrainConfig.hot_share`` 1 %, ``TrainConfig.warm_share`` 4 %) the rule is:

* take the session-start probabilities of the model that ships (the refit on every
  session, with its offline calibration and no online shift) over the sessions of the
  test weeks, the most recent traffic the data holds;
* Hot starts at the score that puts 1 % of those sessions at or above it, Warm at the
  score that puts 5 % (1 % + 4 %) at or above it; everything below is Cold. Each
  threshold sits halfway between the last score inside its tier and the first one
  outside, so rounding in the log-odds comparison cannot move a session across it;
  sessions tied at a threshold all go to the higher tier, so with heavy ties a tier
  holds more than its share (and Warm may be empty when Hot and Warm coincide).

The shipped model has been fitted on those very weeks, so its figures there say nothing
about how well the tiers sort. The card therefore also gives what the tiers are worth
out of time: the evaluated session-start model (fitted before the test weeks, the one
every test figure of the report is about) is cut at its own thresholds for the same
shares, and for each tier the card holds its share of the test-week sessions, their
conversion rate, its capture (the share of all test-week conversions inside it) and its
lift (its rate over the overall rate); on generated data, the mean true probability of
its sessions too (``truth.csv``).

The in-session model's scores are judged against the same thresholds: they are
probabilities of the same event on the same scale, and a session that shows intent
during its hits should climb into Warm or Hot. If the test weeks hold no session, the
thresholds come from the last sessions of the data, and the card says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from artifact.tiers import COLD, HOT, TIER_NAMES, WARM, Tiers
from training.holdout import TRUTH_FILE

# Thresholds stay inside (0, 1), as ``Tiers`` requires, even for saturated scores.
_EDGE = 1e-9
# Sessions to choose on when the test weeks hold none.
FALLBACK_SESSIONS = 10_000


def check_shares(hot_share: float, warm_share: float) -> None:
    """Refuse shares that do not describe a top slice of the traffic."""
    if not (0.0 < hot_share < 1.0 and warm_share >= 0.0 and hot_share + warm_share <= 1.0):
        raise ValueError(
            "tier shares must satisfy 0 < hot_share < 1, warm_share >= 0 and "
            f"hot_share + warm_share <= 1, got {hot_share} and {warm_share}"
        )


def _cut(descending: np.ndarray, share: float) -> float:
    """The probability at or above which ``share`` of the scores lie (at least one)."""
    n = len(descending)
    k = min(n, max(1, round(share * n)))  # how many scores fall at or above the cut
    inside = float(descending[k - 1])
    if k == n:
        return inside
    return (inside + float(descending[k])) / 2.0


def quantile_thresholds(
    probabilities: np.ndarray, hot_share: float, warm_share: float
) -> tuple[float, float]:
    """The (warm, hot) thresholds that put ``hot_share`` of the scores in Hot and the
    next ``warm_share`` in Warm, clipped into (0, 1)."""
    check_shares(hot_share, warm_share)
    p = np.asarray(probabilities, dtype=np.float64)
    p = p[np.isfinite(p)]
    if len(p) == 0:
        raise ValueError("no scores to choose tier thresholds on")
    descending = np.sort(p)[::-1]
    hot = float(np.clip(_cut(descending, hot_share), _EDGE, 1.0 - _EDGE))
    warm = float(np.clip(_cut(descending, hot_share + warm_share), _EDGE, hot))
    return warm, hot


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def tier_figures(
    tiers: Tiers, p: np.ndarray, y: np.ndarray, truth: np.ndarray | None = None
) -> dict[str, dict[str, Any]]:
    """Per tier, hot first: sessions, share, conversions, conversion rate, capture, lift
    (and the mean true probability when ``truth`` is given; NaN where unknown)."""
    y = np.asarray(y, dtype=np.float64)
    codes = tiers.codes(np.asarray(p, dtype=np.float64))
    n, total = len(y), float(y.sum())
    overall = _ratio(total, n)
    out: dict[str, dict[str, Any]] = {}
    for code in (HOT, WARM, COLD):
        inside = codes == code
        sessions, conversions = int(inside.sum()), float(y[inside].sum())
        rate = _ratio(conversions, sessions)
        row: dict[str, Any] = {
            "sessions": sessions,
            "share": _ratio(sessions, n),
            "conversions": int(conversions),
            "conversion_rate": rate,
            "capture": _ratio(conversions, total),
            "lift": _ratio(rate, overall) if rate is not None and overall else None,
        }
        if truth is not None:
            known = inside & np.isfinite(truth)
            row["mean_true_probability"] = float(truth[known].mean()) if known.any() else None
        out[TIER_NAMES[code]] = row
    return out


def tier_shares(tiers: Tiers, p: np.ndarray) -> dict[str, float]:
    """The share of the scores ``p`` in each tier, hot first."""
    counts = np.bincount(tiers.codes(np.asarray(p, dtype=np.float64)), minlength=len(TIER_NAMES))
    n = max(len(p), 1)
    return {TIER_NAMES[code]: float(counts[code] / n) for code in (HOT, WARM, COLD)}


def choice_rows(dates: pd.Series, test_rows: np.ndarray) -> tuple[np.ndarray, str]:
    """The rows to choose the thresholds on, with a description: the test weeks, or the
    last ``FALLBACK_SESSIONS`` sessions by date when the test weeks hold none."""
    if len(test_rows):
        return test_rows, "test weeks"
    dated = np.flatnonzero(dates.notna().to_numpy())
    order = dated[np.argsort(dates.to_numpy()[dated], kind="stable")]
    rows = np.sort(order[-FALLBACK_SESSIONS:])
    return rows, f"the last {len(rows)} sessions (the test weeks hold none)"


def _span(dates: pd.Series, rows: np.ndarray) -> str:
    """The first and last day of the rows."""
    part = dates.iloc[rows]
    return f"{part.min():%Y-%m-%d}..{part.max():%Y-%m-%d}"


def true_probabilities(data_dir: Path, session_ids: np.ndarray) -> np.ndarray | None:
    """The true P(convert) of each session from ``truth.csv`` (generated data only: None
    without the file; NaN for a session it does not list)."""
    path = data_dir / TRUTH_FILE
    if not path.is_file():
        return None
    truth = pd.read_csv(path, dtype={"session_id": str}, usecols=["session_id", "p_convert"])
    pos = pd.Index(truth["session_id"]).get_indexer(pd.Index(session_ids.astype(str)))
    values = truth["p_convert"].to_numpy(dtype=np.float64)
    return np.where(pos >= 0, values[np.maximum(pos, 0)], np.nan)


def choose_tiers(
    shipped_p: np.ndarray,
    evaluated: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    *,
    hot_share: float,
    warm_share: float,
    chosen_on: str,
    measured_on: str,
) -> Tiers:
    """Thresholds at the shipped model's quantiles, with the evaluated model's figures.

    ``evaluated`` is that model's probabilities on the test weeks, their outcomes and
    their true probabilities (or None); with no test-week session it is left out.
    """
    warm, hot = quantile_thresholds(shipped_p, hot_share, warm_share)
    shipped = Tiers(warm=warm, hot=hot)
    info: dict[str, Any] = {
        "hot_share": float(hot_share),
        "warm_share": float(warm_share),
        "chosen_on": chosen_on,
        "shipped_shares": tier_shares(shipped, shipped_p),
    }
    p, y, truth = evaluated
    if len(p):
        e_warm, e_hot = quantile_thresholds(p, hot_share, warm_share)
        own = Tiers(warm=e_warm, hot=e_hot)
        figures = tier_figures(own, p, y, truth)
        figures["hot"]["threshold"] = e_hot
        figures["warm"]["threshold"] = e_warm
        info["measured_on"] = measured_on
        info["test_weeks"] = figures
    else:
        info["measured_on"] = "nothing: the test weeks hold no session"
    return Tiers(warm=warm, hot=hot, chosen_on=info)


def tiers_for_model(
    score: Any,
    x_all: np.ndarray,
    dates: pd.Series,
    test_rows: np.ndarray,
    evaluated: tuple[np.ndarray, np.ndarray, np.ndarray | None],
    shares: tuple[float, float],
) -> Tiers:
    """The tiers of a shipped model whose session-start scorer is ``score`` (feature
    rows to offline-calibrated probabilities), chosen on the test weeks of ``x_all``."""
    rows, where = choice_rows(dates, test_rows)
    hot_share, warm_share = shares
    p = score(x_all[rows])
    return choose_tiers(
        p,
        evaluated,
        hot_share=hot_share,
        warm_share=warm_share,
        chosen_on=(
            f"shipped session-start model (offline calibration), {where} "
            f"{_span(dates, rows)}, {len(rows)} sessions"
        ),
        measured_on=(
            "evaluated session-start model (fitted before the test weeks) at its own "
            f"thresholds for the same shares, test weeks {_span(dates, test_rows)}, "
            f"{len(test_rows)} sessions"
            if len(test_rows)
            else ""
        ),
    )
