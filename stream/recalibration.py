"""Online recalibration: the level of a model's scores follows the outcomes it meets.

A model is calibrated when it ships (``training.refit``); when conversion drifts after
that, its scores keep the old level and the dashboard's expected conversions stop
matching the observed ones. The recalibrator, run by ``python -m stream quality``,
pairs each session's session-start score with its outcome and estimates, per model
version, the shift in log-odds that makes the scores of the last ``window`` outcomes
add up to their conversions. The shift applies to both of the version's models (a change
of base rate moves every conditional log-odds alike), as a monotone map: the order of
sessions, and so every ROC-AUC, stays what it was.

The window is the last ``window`` sessions by start (event time) whose outcomes are
settled, never wall time, so a replay at full speed moves the calibration as the same
traffic would live. A conversion is known at its target hit, a session that does not
convert only once it has been idle for the inactivity gap: so a session enters the
window only once the stream's event time is ``settle_s`` past its start (the gap and
two hours: nearly every session has closed by then), and the window holds the
converted and the unconverted sessions of the same hours. The shift is estimated on the
scores' offline log-odds (each score says the shift it was made with), so scores made
before and after a change count alike. Guard rails:

- nothing moves before the window holds ``min_outcomes`` outcomes and
  ``min_conversions`` conversions;
- an estimate is made every ``every`` new outcomes, and moves the shift by at most
  ``max_step``; it moves only when the estimate is further from the shift in use than
  its own noise (one standard error, ``1 / sqrt(conversions)`` in log-odds) and than
  ``deadband``;
- the shift stays within ``contracts.calibrations.MAX_ABS_SHIFT``; beyond
  ``alert_shift`` (served as ``scorer_calibration_alert_shift``) the README's alert on
  ``scorer_calibration_shift`` fires: the model needs retraining;
- a paused version (``python -m stream calibration pause``) keeps its shift until it
  is resumed; a rollback publishes an earlier shift, paused.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np

from artifact.calibration import level_shift
from contracts.calibrations import (
    MAX_ABS_SHIFT,
    CalibrationRecord,
    Reason,
    State,
    calibration_id,
)
from contracts.limits import FUTURE_SLACK_S
from contracts.times import now_iso

log = logging.getLogger(__name__)

P_EPS = 1e-6  # probabilities are clipped this far from 0 and 1 before their log-odds


@dataclass(frozen=True)
class RecalibrationRules:
    """The recalibrator's window and guard rails."""

    window: int = 20_000  # outcomes
    min_outcomes: int = 5_000
    min_conversions: int = 100
    every: int = 1_000  # outcomes between estimates
    max_step: float = 0.1  # log-odds per update
    deadband: float = 0.01  # log-odds
    alert_shift: float = 0.5  # log-odds: about x1.65 or x0.6 of the shipped level
    settle_s: float = 1800.0 + 7200.0  # event time after a session's start: its outcome is known

    def __post_init__(self) -> None:
        if not 0 < self.min_outcomes <= self.window or self.every <= 0:
            raise ValueError("need 0 < min_outcomes <= window and every > 0")
        if not 0 < self.max_step <= MAX_ABS_SHIFT or self.deadband < 0:
            raise ValueError(f"need 0 < max_step <= {MAX_ABS_SHIFT} and deadband >= 0")


class Outcome(Protocol):
    """What the recalibrator reads of a scored session with an outcome."""

    probability: float
    shift: float
    converted: bool  # may turn true later: a late conversion supersedes a close
    event_time: str | None  # the session's start


def epoch_s(text: str | None) -> float | None:
    """Seconds since the epoch of an ISO time with its offset; None if it is not one."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


def offline_logit(probability: float, shift: float) -> float:
    """The log-odds a score had before its online shift."""
    p = min(max(probability, P_EPS), 1 - P_EPS)
    return math.log(p / (1 - p)) - shift


class VersionWindow:
    """One model version's last outcomes and its calibration as last published."""

    def __init__(self, rules: RecalibrationRules) -> None:
        self.rules = rules
        self.outcomes: deque[Outcome] = deque(maxlen=rules.window)
        self.pending: list[tuple[float, int, Outcome]] = []  # a heap by session start
        self.since = 0  # outcomes since the last estimate
        self.record: CalibrationRecord | None = None
        self.target: float | None = None  # the last estimate, before the step bound

    @property
    def shift(self) -> float:
        return 0.0 if self.record is None else self.record.shift

    @property
    def paused(self) -> bool:
        return self.record is not None and self.record.state == "paused"

    @property
    def seq(self) -> int:
        return 0 if self.record is None else self.record.seq


class Recalibrator:
    """Keeps each model version's window and proposes its next calibration record."""

    def __init__(self, rules: RecalibrationRules | None = None) -> None:
        self.rules = rules or RecalibrationRules()
        self.versions: dict[str, VersionWindow] = {}
        self.event_time = -math.inf  # the latest event time the stream has scored
        self.proposed: list[CalibrationRecord] = []  # made, not yet handed to publish
        self._order = 0

    def _window(self, version: str) -> VersionWindow:
        w = self.versions.get(version)
        if w is None:
            w = self.versions[version] = VersionWindow(self.rules)
        return w

    def observe(self, version: str, outcome: Outcome) -> None:
        """Take a session-start score paired with its outcome; it counts once settled."""
        start = epoch_s(outcome.event_time)
        if start is None:
            return  # no start time: it cannot be placed in event time
        self._order += 1
        heapq.heappush(self._window(version).pending, (start, self._order, outcome))

    def saw_event_time(self, text: str | None) -> None:
        """Move the stream's event time (a score's), settling the sessions it passed."""
        at = epoch_s(text)
        if at is None or at <= self.event_time or at > time.time() + FUTURE_SLACK_S:
            return  # not later, or later than any real event can be (the worker's bound)
        self.event_time = at
        horizon = at - self.rules.settle_s
        for version, w in self.versions.items():
            while w.pending and w.pending[0][0] <= horizon:
                w.outcomes.append(heapq.heappop(w.pending)[2])
                w.since += 1
                if w.since >= self.rules.every:
                    w.since = 0
                    self._tick(version, w)

    def on_record(self, record: CalibrationRecord) -> None:
        """Take a record read from the topic (ours, an operator's, or an earlier run's)."""
        w = self._window(record.model_version)
        if w.record is None or record.seq >= w.record.seq:
            w.record = record

    def estimate(self, version: str) -> tuple[float, int, int] | None:
        """The window's shift estimate, its outcomes and conversions; None below the
        minimums."""
        w = self.versions.get(version)
        if w is None:
            return None
        n = len(w.outcomes)
        conversions = sum(1 for o in w.outcomes if o.converted)
        if n < self.rules.min_outcomes or conversions < self.rules.min_conversions:
            return None
        logits = np.fromiter(
            (offline_logit(o.probability, o.shift) for o in w.outcomes), float, count=n
        )
        target = level_shift(logits, np.full(1, conversions, dtype=np.float64))
        return float(np.clip(target, -MAX_ABS_SHIFT, MAX_ABS_SHIFT)), n, conversions

    def due(self) -> list[CalibrationRecord]:
        """The records to publish now (made as outcomes settled, in their order)."""
        out, self.proposed = self.proposed, []
        return out

    def _tick(self, version: str, w: VersionWindow) -> None:
        """One estimate, after ``every`` settled outcomes: a record if it calls for a move
        beyond the deadband and the estimate's noise, and the version is not paused.

        Made as the outcomes settle, however many settle at once, so the calibration's
        path depends on the stream's event time only, not on how fast it is read."""
        found = self.estimate(version)
        if found is None:
            return
        target, n, conversions = found
        w.target = target
        if w.paused:
            return
        noise = 1.0 / math.sqrt(conversions)
        if abs(target - w.shift) <= max(self.rules.deadband, noise):
            return
        step = float(np.clip(target - w.shift, -self.rules.max_step, self.rules.max_step))
        shift = float(np.clip(w.shift + step, -MAX_ABS_SHIFT, MAX_ABS_SHIFT))
        times = [o.event_time for o in w.outcomes if o.event_time]
        record = make_record(
            version,
            w.seq + 1,
            shift,
            "active",
            "estimate",
            outcomes=n,
            conversions=conversions,
            target_shift=target,
            window=(min(times) if times else None, max(times) if times else None),
        )
        w.record = record  # what the topic will say once it is published
        self.proposed.append(record)
        log.info(
            "calibration %s: shift %+.3f (estimate %+.3f over %d outcomes, %d conversions)",
            record.calibration_id,
            shift,
            target,
            n,
            conversions,
        )


def make_record(
    version: str,
    seq: int,
    shift: float,
    state: State,
    reason: Reason,
    *,
    outcomes: int = 0,
    conversions: int = 0,
    target_shift: float | None = None,
    window: tuple[str | None, str | None] = (None, None),
) -> CalibrationRecord:
    """A calibration record, validated."""
    return CalibrationRecord(
        model_version=version,
        seq=seq,
        calibration_id=calibration_id(version, seq),
        shift=round(shift, 6),
        state=state,
        reason=reason,
        outcomes=outcomes,
        conversions=conversions,
        target_shift=None if target_shift is None else round(target_shift, 6),
        window_from=window[0],
        window_to=window[1],
        decided_at=now_iso(),
    )
