"""Tiers and reasons in the API's answers.

Every score the API answers with names its Hot / Warm / Cold tier (``artifact.tiers``),
judged as the worker judges it: from the unrounded probability, without the online
shift. Reasons (``artifact.explain``) are made on request only (``explain=true``), with
the very model instance that made the probability, so that ``bias`` + the top
contributions + ``rest`` = ``log_odds`` = the logit of that probability.

A stored score (``GET /sessions/{id}/score``) is explained from what the worker keeps
of its session: the session's feature vector and hit-state counters, which are those
its latest score was made from. The API's model explains it only when it is the model
version that made the score, set to that score's online calibration; anything else
gives no reasons and says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from artifact import ConversionModel
from artifact.explain import explain_in_session, explain_session
from contracts import keys
from contracts.calibrations import OFFLINE
from contracts.scores import TIER_NAMES
from features import SESSION_FEATURES
from features.hits import empty_state

# ``reasons`` may ask for one up to every session feature (in-session scores have more
# features; their remaining ones are summed in ``rest`` as for any other).
MAX_REASONS = len(SESSION_FEATURES)
# How far the probability of a recomputed explanation may be from the stored score's
# (rounded to 6 decimals; the booster's margin is float32) and still be that score's.
PROBABILITY_TOLERANCE = 1e-5


def tier_names(model: ConversionModel, probabilities: np.ndarray) -> list[str]:
    """The tier name of each probability ``model`` made."""
    return [TIER_NAMES[c] for c in model.tier_codes(probabilities).tolist()]


def tier_of(model: ConversionModel, probability: float) -> str:
    """The tier name of one probability ``model`` made (Cold without tiers)."""
    tiers = model.tiers
    return TIER_NAMES[0] if tiers is None else tiers.of(probability, model.calibration_shift)


def prediction(
    session_id: str, probability: float, model: ConversionModel, tier: str
) -> dict[str, Any]:
    """One ``POST /predict`` answer (without reasons): the route and the lean path both
    build it here, so their bytes are the same."""
    return {
        "session_id": session_id,
        "probability": round(probability, 6),
        "model_version": model.version,
        "calibration_id": model.calibration_id,
        "tier": tier,
    }


def score_columns(
    model: ConversionModel, cols: Mapping[str, Sequence[Any]], explain: int | None
) -> tuple[list[float], list[str], list[dict[str, Any]] | None]:
    """Score rows given as columns: their probabilities, tiers and, when ``explain``
    is a count of reasons, each row's top that many (else None)."""
    x = model.session_vectors(cols)
    probs = model.score_session_vectors(x)
    one = len(probs) == 1  # one row: as the lean path judges it
    tiers = [tier_of(model, float(probs[0]))] if one else tier_names(model, probs)
    if explain is None:
        return probs.tolist(), tiers, None
    return probs.tolist(), tiers, explain_session(model, x, explain)


def _logistic(z: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * z))


def explain_stored(
    model: ConversionModel,
    score: Mapping[str, Any],
    row: bytes | None,
    hit_state: bytes | None,
    k: int,
) -> tuple[dict[str, Any] | None, str | None]:
    """The top ``k`` reasons of a stored score (a ScoreEvent as a dict), from its
    session's ``row`` and ``hs`` fields; or None and why they cannot be given."""
    version = score.get("model_version")
    if version != model.version:
        return None, (
            f"the score was made by model {version}; the API serves {model.version}, "
            "which cannot explain another model's score"
        )
    if row is None:
        return None, "the session's features are no longer stored"
    vector = np.frombuffer(keys.unpack_row(row).vector, dtype=np.float32)
    if len(vector) != len(SESSION_FEATURES):
        return None, "the session's stored features are not those of the served model"
    # The score's own calibration: its shift, from the model's offline one.
    shifted = model.with_online_shift(
        float(score.get("calibration_shift") or 0.0),
        str(score.get("calibration_id") or OFFLINE),
    )
    x = vector.reshape(1, -1)
    if score.get("trigger") == "session_start":
        explanation = explain_session(shifted, x, k)[0]
    else:
        empty = empty_state().tolist()
        counters = empty if hit_state is None else keys.unpack_hit_state(hit_state, empty)
        states = np.array([counters], dtype=np.float64)
        explanation = explain_in_session(shifted, x, states, k)[0]
    # The stored state is the one the latest score was made from, unless the session
    # moved on between the reads: then the reasons would be another score's.
    probability = float(score.get("probability", math.nan))
    if not abs(_logistic(explanation["log_odds"]) - probability) <= PROBABILITY_TOLERANCE:
        return None, "the session's stored state has moved on since this score: ask again"
    return explanation, None
