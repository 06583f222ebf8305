"""A batch's tiers, the reasons of its Warm and Hot scores, and the leads they make.

Every score gets its tier (``artifact.tiers``). Only Warm and Hot scores are explained
(``artifact.explain``): a few percent of the traffic, computed for the batch at once, each
score's reasons written as the JSON its events carry and as its history entry keeps them.
An explanation that fails costs the score its reasons, never the score: the score is
published without them, and the failure is logged and counted.

A score makes a lead (``contracts.leads``) when its tier is above the highest the
session made a lead of, and the session is open and not converted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from artifact import ConversionModel
from artifact.explain import Written, in_session_reasons_written
from contracts.leads import lead_event
from stream.records import bounded

log = logging.getLogger(__name__)

Explain = Callable[[np.ndarray], list[Written]]
_NO_REASONS: tuple[None, None] = (None, None)


class Explained:
    """Tiers of a batch's probabilities, and the reasons of those at Warm or above."""

    def __init__(self, codes: np.ndarray, reasons: dict[int, Written], failed: int) -> None:
        self.codes = codes
        self.reasons = reasons
        self.failed = failed  # Warm and Hot scores left without reasons
        self._codes: list[int] | None = None

    def count(self, into: list[int]) -> None:
        """Add the number of scores of each tier to ``into`` (by tier code)."""
        for code, n in enumerate(np.bincount(self.codes, minlength=3)[:3]):
            into[code] += int(n)

    def why(self, k: int) -> tuple[int, bytes | None, bytes | None]:
        """The tier code of the ``k``-th probability, and its reasons as the score event
        carries them and as its history entry keeps them (None, None: none)."""
        if self._codes is None:
            self._codes = self.codes.tolist()
        reasons, packed = self.reasons.get(k, _NO_REASONS)
        return self._codes[k], reasons, packed


def explained(
    model: ConversionModel, probabilities: np.ndarray, explain: Explain, with_reasons: bool
) -> Explained:
    """The tiers of ``probabilities`` and, with ``with_reasons``, the reasons of the Warm and
    Hot ones; ``explain`` explains the rows at the indexes it is given."""
    codes = model.tier_codes(probabilities)
    warm = np.flatnonzero(codes > 0)
    if not with_reasons or len(warm) == 0:
        return Explained(codes, {}, 0)
    try:
        found = explain(warm)
    except Exception:  # noqa: BLE001 - the scores go out without their reasons
        log.exception("could not explain %d scores; published without reasons", len(warm))
        return Explained(codes, {}, len(warm))
    reasons = {int(k): r for k, r in zip(warm.tolist(), found, strict=True)}
    return Explained(codes, reasons, 0)


def explained_in_session(
    model: ConversionModel,
    probabilities: np.ndarray,
    session_x: np.ndarray,
    states: np.ndarray,
    with_reasons: bool,
    matrix: np.ndarray | None = None,
) -> Explained:
    """``explained`` for in-session scores, from the session vectors and hit states they
    were made of, or the in-session model's input made already (``matrix``)."""
    return explained(
        model,
        probabilities,
        lambda rows: in_session_reasons_written(
            model, session_x[rows], states[rows], None if matrix is None else matrix[rows]
        ),
        with_reasons,
    )


def lead_json(score: dict[str, Any], channel: list[str] | tuple[str, ...], hits: int) -> bytes:
    """The lead a score made, as published (``contracts.leads.lead_event``)."""
    return bounded(orjson.dumps(lead_event(score, channel, hits)))
