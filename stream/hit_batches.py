"""Hits: each applied once to its session's state, scored, and written with its score.

A hits batch is parsed, read (its sessions' state, unless the run or the cache knows
it), computed (the hits combined into the states in order, duplicates found, every
hit scored) and written (one atomic call that stores each hit with its score). The
batches of one fetch form a run (``HitsRun``): each is computed while the one before
is written, and the run holds their sessions in the gate. How a batch's hits are
combined and scored: ``stream/hit_scores.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import orjson

from contracts.history import history_field
from features.hits import hit_increments
from features.target import is_target_action
from stream.cache import Cached
from stream.clock import EventClock
from stream.hit_scores import HitScorer, partition_of, walk_hits
from stream.logic import BadEvent, parse_hit
from stream.parking import Parking
from stream.records import Context, Output, Record, counts, failure
from stream.state import HitWrite, Offsets, SessionState


@dataclass
class _RunSession:
    """A session as a run's batches left it: ahead of Redis until their writes land."""

    state: SessionState
    applied: set[int] = field(default_factory=set)
    history: dict[str, bytes] = field(default_factory=dict)  # score JSON by history field
    leads: dict[str, bytes] = field(default_factory=dict)  # lead JSON by its score's field
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


async def _done(landed: Awaitable[object]) -> None:
    """Wait for a write to land, whatever it says."""
    await landed


def _columns(hits: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    return {c: [h.get(c) for h in hits] for c in ("hit_number", "hit_time", "event_action")}


class HitBatches:
    """Applies hits to their sessions' state and scores each one, exactly once."""

    def __init__(self, ctx: Context, clock: EventClock, parking: Parking) -> None:
        self.ctx = ctx
        self.clock = clock
        self.parking = parking
        self.scorer = HitScorer(ctx)

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
            st.lead_tier = max(st.lead_tier, w.lead_tier)
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
            known.leads.update(w.leads)
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
        # A copy made earlier in this run may not be in Redis yet; the run has it, and the
        # lead its score made, if any.
        copies: dict[tuple[str, int], tuple[bytes | None, bytes | None]] = {}
        from_redis = []
        for sid, number in batch.duplicates:
            known = run.sessions.get(sid)
            name = history_field("hit", number)
            copy = None if known is None else known.history.get(name)
            if copy is None:
                from_redis.append((sid, number))
            else:
                copies[(sid, number)] = (copy, known.leads.get(name) if known else None)
        stored = await self.ctx.store.stored_copies(
            [(sid, partition_of(states[sid]), history_field("hit", n)) for sid, n in from_redis]
        )
        copies.update(zip(from_redis, stored, strict=True))
        for sid, number in batch.duplicates:
            copy, lead = copies[(sid, number)]
            if copy is not None:
                out.score(sid, copy, "hit")
            if lead is not None:
                out.leads.append((sid, lead))
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
            walk = walk_hits(parsed, states, applied, rows, parked | refused)
            batch.updates, failed = await self.scorer.score(parsed, states, walk, out)
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
