"""Session rows: each new session stored with its start score, a redelivered one copied.

A sessions batch is parsed and scored, computed (new sessions and their writes; the
stored start score of a session seen before, published again as the very same copy)
and written (one atomic call). Batches of one fetch go one after another, each
computed before the last one's write has landed (``SessionsRun``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from artifact import ConversionModel
from artifact.explain import session_reasons_written
from contracts.history import history_entry, history_field
from contracts.scores import TIER_NAMES, score_event
from contracts.times import now_ms, utc_iso
from features.columns import SESSION_COLUMNS
from features.hits import empty_state
from features.session import rows_to_columns
from stream.clock import EventClock
from stream.dashboard import channel_values
from stream.leads import Explained, explained, lead_json
from stream.logic import BadEvent, epoch_ms, parse_session, start_time
from stream.parking import Parking
from stream.records import Context, Output, Record, counts, failure
from stream.state import SessionState, SessionWrite


@dataclass
class SessionsRun:
    """Session batches processed one after another, each read before the last lands.

    A batch's read may go to Redis before the writes of the batches just ahead of it;
    the run remembers the start scores those batches stored, so a row seen again in a
    later batch is a duplicate with the identical copy. It also collects the sessions
    to release once the run's start scores are on Kafka.
    """

    started: dict[str, bytes] = field(default_factory=dict)  # start score JSON by session
    leads: dict[str, bytes] = field(default_factory=dict)  # the lead of a start score, if any
    released: dict[str, int] = field(default_factory=dict)  # partition by session, in order


@dataclass
class SessionsBatch:
    """A sessions batch on its way: parsed and scored, read, computed, then written."""

    out: Output
    n_records: int
    parsed: list[tuple[Record, dict[str, Any]]] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)  # records by partition
    placed: dict[str, int] = field(default_factory=dict)  # new start scores' place in out
    from_run: dict[str, int] = field(default_factory=dict)  # the run's copies' place in out
    model: ConversionModel | None = None  # the model that scored it
    vectors: np.ndarray | None = None
    probs: np.ndarray | None = None
    tiers: Explained | None = None  # the scores' tiers and reasons
    # the lead of each session's start score, if any: made, or a copy (``_landed``)
    leads: dict[str, bytes | None] = field(default_factory=dict)
    # the read of its sessions, sent and not yet awaited (``read``)
    reading: Awaitable[tuple[dict[str, SessionState], list[bool]]] | None = None
    writes: list[SessionWrite] = field(default_factory=list)
    marks: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    computed: bool = False  # its writes are made: it has something to store


def _stored_session(w: SessionWrite) -> SessionState:
    """A session as its start write leaves it in Redis (and a read would return it)."""
    return SessionState(
        known=True,
        ready=False,
        client_id=w.client_id,
        start=w.start,
        vector=np.frombuffer(w.vector.astype(np.float32).tobytes(), dtype=np.float32),
        state=np.array(empty_state(), dtype=np.float64),
        partition=w.partition,
        latest=w.score_json,
        has_latest=True,
        lead_tier=w.lead_tier,
        channel=tuple(w.channel) if w.channel is not None else None,
    )


class SessionStarts:
    """Stores new sessions with their start scores; publishes a seen one's copy again."""

    def __init__(self, ctx: Context, clock: EventClock, parking: Parking) -> None:
        self.ctx = ctx
        self.clock = clock
        self.parking = parking

    def parse(self, records: list[Record]) -> SessionsBatch:
        """Parse a batch of session rows and score them; the bad ones become dead letters.

        A feature or model failure makes every row of the batch a dead letter.
        """
        batch = SessionsBatch(out=Output(), n_records=len(records), counts=counts(records))
        parsed = batch.parsed
        for rec in records:
            try:
                parsed.append((rec, parse_session(rec.value)))
            except BadEvent as exc:
                batch.out.refuse(rec, "parse", str(exc), exc.kind)
        if not parsed:
            return batch
        model = batch.model = self.ctx.model
        try:
            batch.vectors = model.session_vectors(
                rows_to_columns([row for _, row in parsed], SESSION_COLUMNS)
            )
            batch.probs = model.score_session_vectors(batch.vectors)
            if np.isfinite(batch.probs).all():
                return self._explain(batch)
        except Exception:  # noqa: BLE001 - found below, row by row
            pass
        self._score_rows_alone(batch)
        return self._explain(batch)

    def _explain(self, batch: SessionsBatch) -> SessionsBatch:
        """Find a scored batch's tiers, and the reasons of its Warm and Hot scores."""
        model, vectors, probs = batch.model, batch.vectors, batch.probs
        if model is not None and vectors is not None and probs is not None and len(probs):
            batch.tiers = explained(
                model,
                probs,
                lambda rows: session_reasons_written(model, vectors[rows]),
                self.ctx.reasons,
            )
            batch.out.unexplained += batch.tiers.failed
        return batch

    def _score_rows_alone(self, batch: SessionsBatch) -> None:
        """Score a batch's rows one at a time; the rows that fail become dead letters."""
        model = self.ctx.model
        kept, vectors, probs = [], [], []
        for rec, row in batch.parsed:
            stage = "features"
            try:
                vector = model.session_vectors(rows_to_columns([row], SESSION_COLUMNS))
                stage = "score"
                p = model.score_session_vectors(vector)
                if not np.isfinite(p).all():
                    raise ValueError("the model's probability is not a finite number")
            except Exception as exc:  # noqa: BLE001 - one row's feature or model failure
                batch.out.refuse(rec, stage, failure(exc), "failed")
                continue
            kept.append((rec, row))
            vectors.append(vector[0])
            probs.append(p[0])
        batch.parsed = kept
        if kept:
            batch.vectors, batch.probs = np.vstack(vectors), np.asarray(probs)

    async def read(self, batch: SessionsBatch) -> SessionsBatch:
        """Nothing is read for session rows: their write stores only those Redis does not
        hold yet and says which it held (``write``). Kept as the first step of a batch,
        as for hits."""
        return batch

    async def compute(self, batch: SessionsBatch, run: SessionsRun) -> SessionsBatch:
        """Find a read batch's new sessions, and make their start scores and writes.

        A session already stored, in Redis or by an earlier batch of the run, is a
        duplicate: its stored start score is published again, the very same copy.
        """
        if not batch.parsed:
            return batch
        out, model, vectors, probs = batch.out, batch.model, batch.vectors, batch.probs
        tiers = batch.tiers
        assert model is not None and vectors is not None and probs is not None
        assert tiers is not None
        cache = self.ctx.cache
        hfield = history_field("session_start", None)
        online = (model.calibration_id, model.calibration_shift)
        stamp_ms = now_ms()
        stamp = utc_iso(stamp_ms)
        writes: dict[str, SessionWrite] = {}
        sids = [row["session_id"] for _, row in batch.parsed]
        for i, (rec, row) in enumerate(batch.parsed):
            sid = sids[i]
            if sid in writes or sid in run.started or cache.get(sid, rec.partition) is not None:
                out.duplicates += 1
                continue
            start = start_time(row).isoformat()
            tier, reasons, packed = tiers.why(i)
            event = score_event(
                session_id=sid,
                client_id=row.get("client_id"),
                probability=float(probs[i]),
                model_version=model.version,
                trigger="session_start",
                hit_number=None,
                event_time=start,
                scored_at=stamp,
                calibration=online,
                tier=TIER_NAMES[tier],
                reasons=reasons,
            )
            payload = orjson.dumps(event)
            channel = channel_values(row)
            out.tiers[tier] += 1
            if tier:
                batch.leads[sid] = lead_json(event, channel, 0)
            writes[sid] = SessionWrite(
                session_id=sid,
                client_id=row.get("client_id"),
                start=start,
                vector=vectors[i],
                score_json=payload,
                history_field=hfield,
                history=history_entry(
                    probs[i],
                    model.version,
                    True,
                    stamp_ms,
                    online,
                    tier,
                    packed,
                    0 if tier else None,
                ),
                partition=rec.partition,
                event_ms=epoch_ms(start),
                probability=float(probs[i]),
                channel=channel,
                lead_tier=tier,
            )
            batch.placed[sid] = len(out.scores)
            out.score(sid, payload, "session_start")
            if rec.timestamp_ms is not None:
                out.event_ts_ms.append(rec.timestamp_ms)
        # Rows delivered again: publish the stored start score again, the very same copy
        # (from the run while its batch's write may not have landed, else from Redis).
        where = {sid: rec.partition for sid, (rec, _) in zip(sids, batch.parsed, strict=True)}
        again = [s for s in where if s not in writes]
        from_redis = [s for s in again if s not in run.started]
        stored = dict(
            zip(
                from_redis,
                await self.ctx.store.stored_copies([(s, where[s], hfield) for s in from_redis]),
                strict=True,
            )
        )
        for sid in again:
            if sid in run.started:
                batch.from_run[sid] = len(out.scores)
                out.score(sid, run.started[sid], "session_start")
                batch.leads[sid] = run.leads.get(sid)
                continue
            copy, lead = stored.get(sid, (None, None))
            if copy is not None:
                out.score(sid, copy, "session_start")
                batch.leads[sid] = lead
        batch.writes = list(writes.values())
        run.started.update((w.session_id, w.score_json) for w in batch.writes)
        run.leads.update((s, lead) for s in writes if (lead := batch.leads.get(s)) is not None)
        batch.marks = self.clock.raise_marks("sessions", batch.writes)
        batch.computed = True
        out.released = where
        run.released.update(where)
        self.parking.will_start(out.released)
        return batch

    async def write(self, batch: SessionsBatch, run: SessionsRun) -> Awaitable[None]:
        """Send a computed batch's write to Redis (one atomic call); return what to await.

        Awaiting it waits for the write to land; then a row Redis held already (a
        redelivery the worker did not know of) has its stored start score published
        instead of the one just made, the very same copy as the first time.
        """
        if not batch.computed:
            self._leads(batch, set())
            return asyncio.sleep(0)
        landed = await self.ctx.store.send_write(batch.writes, [], batch.marks, events=batch.counts)
        return self._landed(batch, run, landed)

    async def _landed(
        self, batch: SessionsBatch, run: SessionsRun, landed: Awaitable[set[str]]
    ) -> None:
        held = await landed
        out = batch.out
        # What Redis now holds of the sessions this write stored.
        for w in batch.writes:
            if w.session_id not in held:
                self.ctx.cache.put(w.session_id, _stored_session(w), set())
        if held:
            where = {row["session_id"]: rec.partition for rec, row in batch.parsed}
            order = sorted(held)
            hfield = history_field("session_start", None)
            stored = await self.ctx.store.stored_copies([(s, where[s], hfield) for s in order])
            for sid, (copy, lead) in zip(order, stored, strict=True):
                out.duplicates += 1
                at = batch.placed[sid]
                if copy is None:  # it expired since: what was just made is all there is
                    continue
                out.scores[at] = (sid, copy)
                run.started[sid] = copy
                batch.leads[sid] = lead
                if lead is None:
                    run.leads.pop(sid, None)
                else:
                    run.leads[sid] = lead
        # Copies taken from the run before an earlier batch found its row held.
        for sid, at in batch.from_run.items():
            out.scores[at] = (sid, run.started[sid])
            batch.leads[sid] = run.leads.get(sid)
        self._leads(batch, held)

    @staticmethod
    def _leads(batch: SessionsBatch, held: set[str]) -> None:
        """Add the batch's leads, made or copied, to its output; count those it made."""
        out = batch.out
        out.leads += [(sid, lead) for sid, lead in batch.leads.items() if lead is not None]
        for w in batch.writes:
            if w.session_id in held:  # a copy: its score was counted when it was made
                out.tiers[w.lead_tier] -= 1  # a start score's tier is its lead's
            elif w.lead_tier:
                out.new_leads[TIER_NAMES[w.lead_tier]] += 1
