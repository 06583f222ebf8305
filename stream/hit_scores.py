"""A batch's hits walked over their sessions' states, scored, and made into events.

``walk_hits`` combines each hit into its session's state in order and finds the
duplicates and conversions; ``HitScorer`` scores what the walk found and makes the
score and outcome events and each session's write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import orjson

from artifact import ConversionModel
from contracts.history import history_entry, history_field
from contracts.scores import TIER_NAMES, score_event
from contracts.times import iso_from_ms, now_ms, utc_iso
from features.hits import STATE_INDEX, combine_values, empty_state
from stream.leads import explained_in_session, lead_json
from stream.logic import epoch_ms, hit_event_ms, outcome_event
from stream.records import Context, Output, Record, bounded, converted, failure
from stream.state import HitWrite, SessionState

MAX_HIT = STATE_INDEX["max_hit_number"]
TARGETS = STATE_INDEX["target_hits"]
HITS = STATE_INDEX["hits"]
# A hits write sets its session's TTL again once this share of the TTL has passed since
# it was last set (the session start sets it; so does any write of a session the
# worker did not know).
TTL_REFRESH_SHARE = 0.25


@dataclass
class HitsWalk:
    """A batch's hits walked in order over their sessions' states (``walk_hits``)."""

    to_score: list[tuple[int, str, list[float], float]]  # (index, sid, state, event ms)
    converted_at: dict[str, int]  # session -> index in to_score of its first target hit
    duplicates: list[tuple[str, int]]
    out_of_order: int = 0
    late: int = 0


def walk_hits(
    parsed: list[tuple[Record, dict[str, Any]]],
    states: Mapping[str, SessionState],
    applied: list[bool],
    rows: list[Any],
    skip: Collection[int],
) -> HitsWalk:
    """Combine each hit's increment into its session's state, in order; skip duplicates.

    ``skip`` holds the indexes of hits parked or refused. The hot loop works on plain
    floats: numpy's per-element access costs more.
    """
    walk = HitsWalk([], {}, [])
    seen: dict[str, set[int]] = {}
    starts: dict[str, float] = {}
    current = {sid: st.state.tolist() for sid, st in states.items()}
    for i, (_, hit) in enumerate(parsed):
        if i in skip:
            continue
        sid, number = hit["session_id"], hit["hit_number"]
        st = states[sid]
        mine = seen.setdefault(sid, set())
        if applied[i] or number in mine:
            walk.duplicates.append((sid, number))
            continue
        mine.add(number)
        state = current[sid]
        if number < state[MAX_HIT]:
            walk.out_of_order += 1
        if st.closed:
            walk.late += 1
        before = state[TARGETS]
        state = current[sid] = combine_values(state, rows[i])
        # A conversion after an inactivity close supersedes its not-converted outcome.
        if before == 0 and state[TARGETS] > 0 and not converted(st.outcome):
            walk.converted_at[sid] = len(walk.to_score)
        if sid not in starts:
            starts[sid] = epoch_ms(st.start) if st.start else 0.0
        walk.to_score.append((i, sid, state, hit_event_ms(starts[sid], hit["hit_time"])))
    return walk


def partition_of(state: SessionState) -> int:
    """The partition a session's state was read from."""
    assert state.partition is not None, "a state read from the store has its partition"
    return state.partition


class HitScorer:
    """Scores a walk's hits with the model in use and makes their events and writes."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @staticmethod
    def _probabilities(
        model: ConversionModel,
        vecs: np.ndarray,
        hit_states: np.ndarray,
        walk: HitsWalk,
        matrix: np.ndarray | None,
    ) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        """Score a walk's hits: all at once, else one by one; return what failed too."""
        to_score = walk.to_score
        try:
            probs = model.score_in_session(vecs, hit_states, matrix)
            if np.isfinite(probs).all():
                return probs, []
        except Exception:  # noqa: BLE001 - found below, hit by hit
            pass
        failed, alone = [], []
        for k, (i, _, _, _) in enumerate(to_score):
            try:
                p = model.score_in_session(vecs[k : k + 1], hit_states[k : k + 1])
                if not np.isfinite(p).all():
                    raise ValueError("the model's probability is not a finite number")
                alone.append(p[0])
            except Exception as exc:  # noqa: BLE001 - one hit's model failure
                failed.append((i, "score", failure(exc)))
        return np.asarray(alone), failed  # without failures, only the batch as a whole failed

    async def score(
        self,
        parsed: list[tuple[Record, dict[str, Any]]],
        states: dict[str, SessionState],
        walk: HitsWalk,
        out: Output,
    ) -> tuple[list[HitWrite], list[tuple[int, str, str]]]:
        """Score a walk's hits; add their events to ``out``; return their writes.

        Also returns the hits that failed, as (index in ``parsed``, stage, error); then
        nothing is added to ``out`` and there are no writes: the caller walks the batch
        again without them.
        """
        to_score, converted_at = walk.to_score, walk.converted_at
        if not to_score:
            return [], []
        model = self.ctx.model
        vecs = np.vstack([cast(np.ndarray, states[sid].vector) for _, sid, _, _ in to_score])
        hit_states = np.array([s for _, _, s, _ in to_score], dtype=np.float64)
        # The in-session model's input, made once for the scores and their reasons.
        matrix = None
        if model.in_session_booster is not None:
            with contextlib.suppress(Exception):  # scored hit by hit below, if at all
                matrix = model.in_session_matrix(vecs, hit_states)
        probs, failed = self._probabilities(model, vecs, hit_states, walk, matrix)
        if failed:
            return [], failed
        tiers = explained_in_session(model, probs, vecs, hit_states, self.ctx.reasons, matrix)
        made: dict[str, int] = {}  # each session's highest lead tier, as the batch goes
        version = model.version
        online = (model.calibration_id, model.calibration_shift)
        latest = {sid: states[sid].latest for _, sid, _, _ in to_score}
        # A conversion's outcome carries the score before it; the read brought it
        # for every session with a target hit, this reads any other.
        unread = [sid for sid in converted_at if not states[sid].has_latest]
        where = {sid: partition_of(states[sid]) for sid in unread}
        latest.update(zip(unread, await self.ctx.store.latest_scores(where), strict=True))
        last: dict[str, list[float]] = {}  # each session's state after its last hit
        writes: dict[str, HitWrite] = {}
        events = Output()
        stamp_ms = now_ms()
        stamp = utc_iso(stamp_ms)
        for k, ((i, sid, state, event_ms), p) in enumerate(zip(to_score, probs, strict=True)):
            rec, hit = parsed[i]
            st = states[sid]
            event_time = iso_from_ms(event_ms) if st.start else None
            try:
                outcome = None
                if converted_at.get(sid) == k:
                    outcome = bounded(
                        orjson.dumps(
                            outcome_event(
                                session_id=sid,
                                client_id=st.client_id,
                                outcome="converted",
                                hit_number=hit["hit_number"],
                                event_time=event_time,
                                last_score=latest[sid],
                            )
                        )
                    )
                probability = float(p)
                tier, reasons, packed = tiers.why(k)
                event = score_event(
                    session_id=sid,
                    client_id=st.client_id,
                    probability=probability,
                    model_version=version,
                    trigger="hit",
                    hit_number=hit["hit_number"],
                    event_time=event_time,
                    scored_at=stamp,
                    calibration=online,
                    tier=TIER_NAMES[tier],
                    reasons=reasons,
                )
                payload = bounded(orjson.dumps(event))
                lead = None
                if tier > made.get(sid, st.lead_tier) and self._open(st, converted_at, sid, k):
                    assert st.channel is not None
                    lead = lead_json(event, st.channel, int(state[HITS]))
            except Exception as exc:  # noqa: BLE001 - one hit's events cannot be made
                failed.append((i, "serialise", failure(exc)))
                continue
            w = writes.get(sid)
            if w is None:
                w = writes[sid] = self._new_write(sid, st, rec, event_ms)
            if outcome is not None:
                w.outcome = outcome
                events.outcomes.append((sid, outcome))
            if lead is not None:
                made[sid] = w.lead_tier = tier
                w.leads.append((history_field("hit", hit["hit_number"]), lead))
                events.leads.append((sid, lead))
                events.new_leads[TIER_NAMES[tier]] += 1
            latest[sid] = payload
            last[sid] = state
            w.probability = probability
            if event_ms > w.event_ms:
                w.event_ms = event_ms
            w.applied.append(hit["hit_number"])
            w.scores.append((history_field("hit", hit["hit_number"]), payload))
            w.entries.append(
                history_entry(
                    probability,
                    version,
                    event_ms if st.start else None,
                    stamp_ms,
                    online,
                    tier,
                    packed,
                    None if lead is None else int(state[HITS]),
                )
            )
            events.score(sid, payload, "hit")
            if rec.timestamp_ms is not None:
                events.event_ts_ms.append(rec.timestamp_ms)
        if failed:
            return [], failed
        for sid, w in writes.items():
            w.state = np.asarray(last[sid], dtype=np.float64)
        out.outcomes += events.outcomes
        out.scores += events.scores
        out.leads += events.leads
        out.new_leads.update(events.new_leads)
        out.unexplained += tiers.failed
        tiers.count(out.tiers)
        for trigger, n in events.triggers.items():
            out.triggers[trigger] = out.triggers.get(trigger, 0) + n
        out.event_ts_ms += events.event_ts_ms
        return list(writes.values()), []

    @staticmethod
    def _open(st: SessionState, converted_at: dict[str, int], sid: str, k: int) -> bool:
        """Whether a session may still make a lead at the ``k``-th score of the walk: it is
        open, has not converted, and none of its hits up to this one is its target, and
        its channel is known (it is, once its row is stored)."""
        if st.closed or st.outcome is not None or st.channel is None:
            return False
        at = converted_at.get(sid)
        return at is None or k < at

    def _new_write(self, sid: str, st: SessionState, rec: Record, event_ms: float) -> HitWrite:
        """A session's write for a batch, before its hits are added to it."""
        return HitWrite(
            session_id=sid,
            state=empty_state(),
            applied=[],
            scores=[],
            partition=st.partition if st.partition is not None else rec.partition,
            event_ms=event_ms,
            closed=st.closed,
            converted=st.outcome is not None,
            refresh_ttl=self.ctx.cache.ttl_due(
                sid, partition_of(st), self.ctx.store.ttl * TTL_REFRESH_SHARE
            ),
        )
