"""Hits: each applied once to its session's state, scored, and written with its score.

A hits batch is parsed, read (its sessions' state, unless the run or the cache knows
it), computed (the hits combined into the states in order, duplicates found, every
hit scored) and written (one atomic call that stores each hit with its score). The
batches of one fetch form a run (``HitsRun``): each is computed while the one before
is written, and the run holds their sessions in the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import orjson

from artifact import ConversionModel
from contracts.history import history_entry, history_field
from contracts.scores import score_event
from contracts.times import iso_from_ms, now_ms, utc_iso
from features.hits import STATE_INDEX, combine_values, empty_state, hit_increments
from features.target import is_target_action
from stream.cache import Cached
from stream.clock import EventClock
from stream.logic import BadEvent, epoch_ms, hit_event_ms, outcome_event, parse_hit
from stream.parking import Parking
from stream.records import Context, Output, Record, bounded, converted, counts, failure
from stream.state import HitWrite, Offsets, SessionState

MAX_HIT = STATE_INDEX["max_hit_number"]
TARGETS = STATE_INDEX["target_hits"]
# A hits write sets its session's TTL again once this share of the TTL has passed since
# it was last set (the session start sets it; so does any write of a session the
# worker did not know).
TTL_REFRESH_SHARE = 0.25


@dataclass
class _RunSession:
    """A session as a run's batches left it: ahead of Redis until their writes land."""

    state: SessionState
    applied: set[int] = field(default_factory=set)
    history: dict[str, bytes] = field(default_factory=dict)  # score JSON by history field
    # ``applied`` holds every hit applied, not only the run's: the session came from the
    # cache. One read from Redis knows only the hits its batch asked about, so it is
    # not cached (its later batches read it again).
    complete: bool = False


@dataclass
class HitsRun:
    """Hits batches processed one after another, each written while the next computes.

    A batch's state read may go to Redis before the writes of the batches just ahead of
    it have landed; the run remembers what those batches did to their sessions (the
    state, the hits applied, the scores) and that is what the batch works on. The run
    holds its sessions in the gate until it ends, so no close round reads one of them
    meanwhile. Runs never overlap each other.
    """

    held: set[str] = field(default_factory=set)
    sessions: dict[str, _RunSession] = field(default_factory=dict)


@dataclass
class HitsBatch:
    """A hits batch on its way: parsed, read, computed, then written."""

    out: Output
    n_records: int
    parsed: list[tuple[Record, dict[str, Any]]] = field(default_factory=list)
    states: dict[str, SessionState] = field(default_factory=dict)
    applied: list[bool] = field(default_factory=list)  # per parsed hit: applied already
    # the state read, sent and not yet awaited (``HitBatches.read``)
    reading: Awaitable[tuple[dict[str, SessionState], list[bool]]] | None = None
    updates: list[HitWrite] = field(default_factory=list)
    marks: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    duplicates: list[tuple[str, int]] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)  # records by partition
    events: dict[int, int] = field(default_factory=dict)  # the same, less the parked hits
    known: set[str] = field(default_factory=set)  # sessions the run or the cache knew: not read
    cached: dict[str, Cached] = field(default_factory=dict)  # those the cache knew
    failed: bool = False  # a feature or model failure: all dead letters, nothing to store


@dataclass
class _HitsWalk:
    """A batch's hits walked in order over their sessions' states (``_walk_hits``)."""

    to_score: list[tuple[int, str, list[float], float]]  # (index, sid, state, event ms)
    converted_at: dict[str, int]  # session -> index in to_score of its first target hit
    duplicates: list[tuple[str, int]]
    out_of_order: int = 0
    late: int = 0


def _walk_hits(
    parsed: list[tuple[Record, dict[str, Any]]],
    states: Mapping[str, SessionState],
    applied: list[bool],
    rows: list[Any],
    skip: Collection[int],
) -> _HitsWalk:
    """Combine each hit's increment into its session's state, in order; skip duplicates.

    ``skip`` holds the indexes of hits parked or refused. The hot loop works on plain
    floats: numpy's per-element access costs more.
    """
    walk = _HitsWalk([], {}, [])
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


async def _done(landed: Awaitable[object]) -> None:
    """Wait for a write to land, whatever it says."""
    await landed


def _partition(state: SessionState) -> int:
    """The partition a session's state was read from."""
    assert state.partition is not None, "a state read from the store has its partition"
    return state.partition


def _columns(hits: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    return {c: [h.get(c) for h in hits] for c in ("hit_number", "hit_time", "event_action")}


class HitBatches:
    """Applies hits to their sessions' state and scores each one, exactly once."""

    def __init__(self, ctx: Context, clock: EventClock, parking: Parking) -> None:
        self.ctx = ctx
        self.clock = clock
        self.parking = parking

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[HitsRun]:
        """A run of hits batches, which may overlap: see ``HitsRun``.

        Its sessions are held in the gate until the block ends, so the close sweep
        leaves them alone while any of the run's writes may still be under way.
        """
        run = HitsRun()
        try:
            yield run
        finally:
            self.ctx.gate.let_go(run.held)

    def parse(self, records: list[Record]) -> HitsBatch:
        """Parse a batch of hit records; the bad ones become dead letters."""
        batch = HitsBatch(out=Output(), n_records=len(records), counts=counts(records))
        for rec in records:
            try:
                batch.parsed.append((rec, parse_hit(rec.value)))
            except BadEvent as exc:
                batch.out.refuse(rec, "parse", str(exc), exc.kind)
        return batch

    async def read(self, batch: HitsBatch, run: HitsRun) -> HitsBatch:
        """Hold a batch's sessions for the run, then send the read of their state.

        A session held by a close round is waited for; one the run holds already is not.
        The read's reply is awaited by ``compute``: meanwhile the worker may compute
        the batches ahead of this one (whose effects the run keeps) and send their writes.
        """
        sids = {h["session_id"] for _, h in batch.parsed}
        need = sids - run.held
        if need:
            run.held.update(await self.ctx.gate.hold(need))
        if batch.parsed:
            # Sessions the run or the cache knows are not read: what they say is what
            # Redis holds, or will once the run's writes land.
            where: dict[str, int] = {}
            for rec, h in batch.parsed:
                sid = h["session_id"]
                if sid in where or sid in batch.known:
                    continue
                if sid not in run.sessions:
                    cached = self.ctx.cache.get(sid, rec.partition)
                    if cached is None:
                        where[sid] = rec.partition
                        continue
                    batch.cached[sid] = cached
                batch.known.add(sid)
            # A session's latest score goes into the outcome of its conversion: read it
            # only where a hit of the batch is a target.
            batch.reading = await self.ctx.store.send_read(
                where,
                [
                    (h["session_id"], h["hit_number"])
                    for _, h in batch.parsed
                    if h["session_id"] in where
                ],
                latest={
                    h["session_id"]
                    for _, h in batch.parsed
                    if is_target_action(h.get("event_action"))
                },
            )
        return batch

    async def compute(self, batch: HitsBatch, run: HitsRun) -> HitsBatch:
        """Apply a read batch's hits to its sessions' state and score them.

        Where an earlier batch of the run changed a session, its state is taken from the
        run rather than from the read, which may have come before that batch's write.
        The run learns the new state of each session at once: the next batch may be
        computed before this one's write lands.
        """
        if batch.reading is not None:
            batch.states, read = await batch.reading
            batch.reading = None
            flags = iter(read)
            batch.applied = [
                False if h["session_id"] in batch.known else next(flags) for _, h in batch.parsed
            ]
            for sid in batch.known:
                cached = batch.cached.get(sid)
                batch.states[sid] = (
                    dataclasses.replace(cached.state)
                    if cached is not None
                    else run.sessions[sid].state
                )
        if not batch.parsed:
            return batch
        states, applied = batch.states, batch.applied
        for sid in states:
            known = run.sessions.get(sid)
            if known is not None:
                # A copy: the run keeps the old state if this batch fails.
                states[sid] = dataclasses.replace(known.state)
        for i, (_, hit) in enumerate(batch.parsed):
            sid = hit["session_id"]
            known = run.sessions.get(sid)
            done = known.applied if known is not None else None
            if done is None and sid in batch.cached:
                done = batch.cached[sid].applied
            if done is not None and hit["hit_number"] in done:
                applied[i] = True
        await self.apply(batch, states, applied)
        self._remember(batch, run)
        return batch

    def _remember(self, batch: HitsBatch, run: HitsRun) -> None:
        """Keep what a computed batch did to its sessions, in the run and the cache."""
        cache = self.ctx.cache
        for w in batch.updates:
            st = batch.states[w.session_id]
            st.state = w.state
            st.latest, st.has_latest = w.scores[-1][1], True
            if w.outcome is not None:
                st.outcome = w.outcome
            known = run.sessions.get(w.session_id)
            if known is None:
                cached = batch.cached.get(w.session_id)
                if cached is None:
                    known = _RunSession(st)
                else:
                    known = _RunSession(st, set(cached.applied), complete=True)
                run.sessions[w.session_id] = known
            known.state = st
            known.applied.update(w.applied)
            known.history.update(w.scores)
            if known.complete:
                ttl_at = None if w.refresh_ttl else cache.ttl_set_at(w.session_id)
                cache.put(w.session_id, st, known.applied, ttl_at)

    async def write(
        self, batch: HitsBatch, run: HitsRun, offsets: Offsets | None = None
    ) -> Awaitable[None]:
        """Send a computed batch's write to Redis (one atomic call); return what to await.

        Awaiting it waits for the write to land, then finds the copies of its duplicates'
        scores. A run writes its batches one after the other, in order. ``offsets`` (the
        fetch's, with its last batch) raise the applied input offsets in the same call.
        """
        store = self.ctx.store
        if batch.failed:
            if not offsets:
                return asyncio.sleep(0)
            return _done(await store.send_write([], [], offsets=offsets))
        landed = await store.send_write(
            [], batch.updates, batch.marks, events=batch.events, offsets=offsets
        )
        return self._written(batch, run, landed)

    async def _written(self, batch: HitsBatch, run: HitsRun, landed: Awaitable[set[str]]) -> None:
        await landed
        if not batch.duplicates:
            return
        out, states = batch.out, batch.states
        # A copy made earlier in this run may not be in Redis yet; the run has it.
        copies: dict[tuple[str, int], bytes | None] = {}
        from_redis = []
        for sid, number in batch.duplicates:
            known = run.sessions.get(sid)
            copy = None if known is None else known.history.get(history_field("hit", number))
            if copy is None:
                from_redis.append((sid, number))
            copies[(sid, number)] = copy
        stored = await self.ctx.store.stored_scores(
            [(sid, _partition(states[sid]), history_field("hit", n)) for sid, n in from_redis]
        )
        copies.update(zip(from_redis, stored, strict=True))
        for sid, number in batch.duplicates:
            copy = copies[(sid, number)]
            if copy is not None:
                out.score(sid, copy, "hit")
            outcome = states[sid].outcome
            if outcome is not None and orjson.loads(outcome).get("hit_number") == number:
                out.outcomes.append((sid, outcome))

    def _increments(self, out: Output, parsed: list[tuple[Record, dict[str, Any]]]) -> list[Any]:
        """Each hit's state increment as a list of floats, None where its features failed.

        The batch is computed at once; if that fails, each hit alone, so only the hits
        that fail by themselves become dead letters.
        """
        try:
            increments = hit_increments(_columns([h for _, h in parsed]))
            if np.isfinite(increments).all():
                return cast(list[Any], increments.tolist())
        except Exception:  # noqa: BLE001 - found below, hit by hit
            pass
        rows: list[Any] = []
        for rec, hit in parsed:
            try:
                row = hit_increments(_columns([hit])).tolist()[0]
                if not all(math.isfinite(x) for x in row):
                    raise ValueError("a feature is not a finite number")
                rows.append(row)
            except Exception as exc:  # noqa: BLE001 - one hit's feature failure
                out.refuse(rec, "features", failure(exc), "failed")
                rows.append(None)
        return rows

    async def apply(
        self, batch: HitsBatch, states: dict[str, SessionState], applied: list[bool]
    ) -> None:
        """Apply and score a read batch's hits; hits that fail alone become dead letters.

        A hit whose features, score or events fail is left out and the batch is walked
        again without it: the later hits of its session are combined without it too.
        """
        out, parsed = batch.out, batch.parsed
        rows = self._increments(out, parsed)
        refused = {i for i, row in enumerate(rows) if row is None}
        parked = await self.parking.park(parsed, states, refused, out)
        out.parked = len(parked)
        # A parked hit counts once applied.
        batch.events = dict(batch.counts)
        for i in parked:
            batch.events[parsed[i][0].partition] -= 1
        while True:
            walk = _walk_hits(parsed, states, applied, rows, parked | refused)
            failed = await self._score(batch, states, walk)
            if not failed:
                break
            for i, stage, error in failed:
                out.refuse(parsed[i][0], stage, error, "failed")
                refused.add(i)
        out.duplicates += len(walk.duplicates)
        out.out_of_order += walk.out_of_order
        out.late += walk.late
        batch.duplicates = walk.duplicates
        batch.failed = bool(refused) and not batch.updates and not walk.duplicates
        batch.marks = self.clock.raise_marks("hits", batch.updates)

    @staticmethod
    def _probabilities(
        model: ConversionModel, states: dict[str, SessionState], walk: _HitsWalk
    ) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        """Score a walk's hits: all at once, else one by one; return what failed too."""
        to_score = walk.to_score
        vecs = np.vstack([cast(np.ndarray, states[sid].vector) for _, sid, _, _ in to_score])
        hit_states = np.array([s for _, _, s, _ in to_score], dtype=np.float64)
        try:
            probs = model.score_in_session(vecs, hit_states)
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

    async def _score(
        self, batch: HitsBatch, states: dict[str, SessionState], walk: _HitsWalk
    ) -> list[tuple[int, str, str]]:
        """Score a walk's hits and make their events and writes (into ``batch``).

        Returns the hits that failed, as (index in ``parsed``, stage, error); then
        nothing is added to the batch, and the caller walks it again without them.
        """
        to_score, converted_at = walk.to_score, walk.converted_at
        parsed = batch.parsed
        batch.updates = []
        if not to_score:
            return []
        model = self.ctx.model
        probs, failed = self._probabilities(model, states, walk)
        if failed:
            return failed
        version = model.version
        latest = {sid: states[sid].latest for _, sid, _, _ in to_score}
        # A conversion's outcome carries the score before it; the read brought it
        # for every session with a target hit, this reads any other.
        unread = [sid for sid in converted_at if not states[sid].has_latest]
        where = {sid: _partition(states[sid]) for sid in unread}
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
                payload = bounded(
                    orjson.dumps(
                        score_event(
                            session_id=sid,
                            client_id=st.client_id,
                            probability=probability,
                            model_version=version,
                            trigger="hit",
                            hit_number=hit["hit_number"],
                            event_time=event_time,
                            scored_at=stamp,
                        )
                    )
                )
            except Exception as exc:  # noqa: BLE001 - one hit's events cannot be made
                failed.append((i, "serialise", failure(exc)))
                continue
            w = writes.get(sid)
            if w is None:
                w = writes[sid] = self._new_write(sid, st, rec, event_ms)
            if outcome is not None:
                w.outcome = outcome
                events.outcomes.append((sid, outcome))
            latest[sid] = payload
            last[sid] = state
            w.probability = probability
            if event_ms > w.event_ms:
                w.event_ms = event_ms
            w.applied.append(hit["hit_number"])
            w.scores.append((history_field("hit", hit["hit_number"]), payload))
            w.entries.append(
                history_entry(probability, version, event_ms if st.start else None, stamp_ms)
            )
            events.score(sid, payload, "hit")
            if rec.timestamp_ms is not None:
                events.event_ts_ms.append(rec.timestamp_ms)
        if failed:
            return failed
        for sid, w in writes.items():
            w.state = np.asarray(last[sid], dtype=np.float64)
        out = batch.out
        out.outcomes += events.outcomes
        out.scores += events.scores
        for trigger, n in events.triggers.items():
            out.triggers[trigger] = out.triggers.get(trigger, 0) + n
        out.event_ts_ms += events.event_ts_ms
        batch.updates = list(writes.values())
        return []

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
                sid, _partition(st), self.ctx.store.ttl * TTL_REFRESH_SHARE
            ),
        )
