"""Processing of micro-batches of session and hit events.

The pipeline hands over batches of raw Kafka records; this module parses them, keeps
the state in Redis, scores with the model and returns what to publish. A bad record
becomes a dead letter with its reason; it never stops the batch. Order of effects per
batch: Redis first (one atomic script call), then Kafka, then the offsets may be
committed. After a crash the batch is delivered again: sessions and hits already
applied are recognised and their stored scores published again as identical copies.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import orjson

from artifact import ConversionModel
from features.columns import SESSION_COLUMNS
from features.hits import STATE_INDEX, combine, hit_increments
from features.session import rows_to_columns
from stream.dashboard import channel_values
from stream.gate import SessionGate
from stream.logic import (
    BadEvent,
    epoch_ms,
    history_field,
    hit_event_ms,
    iso_from_ms,
    now_iso,
    outcome_event,
    parse_hit,
    parse_session,
    score_event,
    start_time,
)
from stream.state import CloseWrite, HitWrite, ParkedHit, RedisStore, SessionWrite

log = logging.getLogger(__name__)

MAX_HIT = STATE_INDEX["max_hit_number"]
TARGETS = STATE_INDEX["target_hits"]


@dataclass
class Record:
    """One consumed Kafka record."""

    value: bytes | None
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    timestamp_ms: float | None = None  # the Kafka record's timestamp


@dataclass
class Output:
    """What a batch produced: events to publish, sessions to release, and counts."""

    scores: list[tuple[str, bytes]] = field(default_factory=list)  # (session_id, JSON)
    outcomes: list[tuple[str, bytes]] = field(default_factory=list)  # (session_id, JSON)
    released: list[str] = field(default_factory=list)  # sessions to release after publishing
    dead_letters: list[tuple[str, bytes]] = field(default_factory=list)  # (stage, JSON)
    duplicates: int = 0
    parked: int = 0
    out_of_order: int = 0
    late: int = 0
    triggers: dict[str, int] = field(default_factory=dict)  # scores by trigger
    event_ts_ms: list[float] = field(default_factory=list)  # Kafka timestamps of scored events
    # sessions to mark closed once published, by partition
    closed: dict[int, list[str]] = field(default_factory=dict)

    def score(self, sid: str, payload: bytes, trigger: str) -> None:
        """Add a score event to publish."""
        self.scores.append((sid, payload))
        self.triggers[trigger] = self.triggers.get(trigger, 0) + 1


def _converted(outcome: bytes | None) -> bool:
    return outcome is not None and b'"outcome":"converted"' in outcome


def dead_letter(record: Record, stage: str, error: str) -> bytes:
    """Describe a record that could not be processed, with its original bytes."""
    raw = record.value or b""
    return orjson.dumps(
        {
            "source_topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": None if record.key is None else record.key.decode("utf-8", "replace"),
            "stage": stage,
            "error": error,
            "original_base64": base64.b64encode(raw).decode(),
            "original_text": raw.decode("utf-8", "replace"),
            "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
    )


INPUT_KINDS = ("sessions", "hits")
START_WAIT_S = 2.0  # longest a hit waits for its session's start score in this worker
IDLE_MS = 5000.0  # an input topic without events for this long is quiet


class Processor:
    """Turns batches of records into state, scores and dead letters."""

    def __init__(
        self, model: ConversionModel, store: RedisStore, hits_topic: str = "ga.hits"
    ) -> None:
        self.model = model
        self.store = store
        self.hits_topic = hits_topic  # named in the dead letters of parked hits
        # (input kind, partition) -> (event-time high-water mark, wall time it was
        # reached), in ms; "sessions" and "hits" of one partition number are co-partitioned
        self.watermarks: dict[tuple[str, int], tuple[float, float]] = {}
        # Sessions whose parked hits are being applied (see ``release``), each with the
        # number of releases under way (a redelivered row may race the original): not
        # to be closed while any is.
        self.releasing: collections.Counter[str] = collections.Counter()
        # Sessions stored by this worker whose start score is being published.
        self.starting: dict[str, asyncio.Event] = {}
        # Sessions a hits batch or a close round is working on (see stream/gate.py).
        self.gate = SessionGate()

    @contextlib.contextmanager
    def releasing_sessions(self, sids: Sequence[str]) -> Iterator[None]:
        """Keep the close sweep off these sessions while their parked hits are applied."""
        self.releasing.update(sids)
        try:
            yield
        finally:
            self.releasing.subtract(sids)
            for sid in sids:
                if self.releasing[sid] <= 0:
                    del self.releasing[sid]

    def _dead(self, out: Output, record: Record, stage: str, error: str) -> None:
        log.warning(
            "dead letter from %s[%d]@%d at %s: %s",
            record.topic,
            record.partition,
            record.offset,
            stage,
            error,
        )
        out.dead_letters.append((stage, dead_letter(record, stage, error)))

    async def sessions(self, records: list[Record]) -> Output:
        """Process session-start records."""
        out = Output()
        parsed: list[tuple[Record, dict[str, Any]]] = []
        for rec in records:
            try:
                parsed.append((rec, parse_session(rec.value)))
            except BadEvent as exc:
                self._dead(out, rec, "parse", str(exc))
        if not parsed:
            return out
        rows = [row for _, row in parsed]
        model = self.model
        try:
            vectors = model.session_vectors(rows_to_columns(rows, SESSION_COLUMNS))
            probs = model.score_session_vectors(vectors)
        except Exception as exc:  # noqa: BLE001 - a feature or model failure is per batch data
            for rec, _ in parsed:
                self._dead(out, rec, "score", f"{type(exc).__name__}: {exc}")
            return out
        sids = [row["session_id"] for row in rows]
        known, _ = await self.store.read(sids)
        hfield = history_field("session_start", None)
        stamp = now_iso()
        writes: dict[str, SessionWrite] = {}
        for i, (rec, row) in enumerate(parsed):
            sid = row["session_id"]
            if sid in writes or known[sid].known:
                out.duplicates += 1
                continue
            start = start_time(row).isoformat()
            event = score_event(
                session_id=sid,
                client_id=row.get("client_id"),
                probability=float(probs[i]),
                model_version=model.version,
                trigger="session_start",
                hit_number=None,
                event_time=start,
                scored_at=stamp,
            )
            payload = orjson.dumps(event)
            writes[sid] = SessionWrite(
                session_id=sid,
                client_id=row.get("client_id"),
                start=start,
                vector=vectors[i],
                score_json=payload,
                history_field=hfield,
                partition=rec.partition,
                event_ms=epoch_ms(start),
                probability=float(probs[i]),
                channel=channel_values(row),
            )
            out.score(sid, payload, "session_start")
            if rec.timestamp_ms is not None:
                out.event_ts_ms.append(rec.timestamp_ms)
        # Redelivered rows: publish the stored start score again, the very same copy.
        again = [s for s in dict.fromkeys(sids) if s not in writes and known[s].known]
        for sid, copy in zip(
            again, await self.store.stored_scores([(s, hfield) for s in again]), strict=True
        ):
            if copy is not None:
                out.score(sid, copy, "session_start")
        new = list(writes.values())
        await self.store.write(new, [], self._raise_marks("sessions", new), events=len(records))
        out.released = list(dict.fromkeys(sids))
        for sid in out.released:
            self.starting.setdefault(sid, asyncio.Event())
        return out

    async def release(self, sids: list[str]) -> list[Record]:
        """Let hits through for sessions whose start score is on Kafka; return parked hits.

        The caller applies the parked hits (``hits``), publishes what they produce and
        then drops them with ``forget_pending``. Until then they stay in Redis: after a
        crash the session's row is delivered again and releases them again.
        """
        parked = await self.store.release(sids)
        for sid in sids:
            started = self.starting.pop(sid, None)
            if started is not None:
                started.set()
        return [
            Record(
                value=h.raw,
                topic=self.hits_topic,
                partition=h.partition,
                offset=h.offset,
                key=h.session_id.encode(),
                timestamp_ms=h.timestamp_ms,
            )
            for h in parked
        ]

    async def forget_pending(self, sids: list[str]) -> None:
        """Drop parked hits once they are applied and their scores published."""
        await self.store.forget_pending(sids)

    async def _park(
        self, parsed: list[tuple[Record, dict[str, Any]]], states: dict[str, Any]
    ) -> set[int]:
        """Park the hits whose session is not ready; return their indexes in ``parsed``.

        A session whose row this worker is publishing right now is waited for (at most
        START_WAIT_S) instead. Parking is one Redis call for the whole batch; a session
        that turns out to be ready by then is read again and its hits are applied.
        """
        waiting = {h["session_id"] for _, h in parsed if not states[h["session_id"]].ready}
        if not waiting:
            return set()
        starting = [self.starting[sid].wait() for sid in waiting if sid in self.starting]
        if starting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*starting), START_WAIT_S)
            states.update((await self.store.read(sorted(waiting)))[0])
        candidates = [
            (
                i,
                ParkedHit(
                    h["session_id"], rec.value or b"", rec.partition, rec.offset, rec.timestamp_ms
                ),
            )
            for i, (rec, h) in enumerate(parsed)
            if not states[h["session_id"]].ready
        ]
        if not candidates:
            return set()
        flags = await self.store.park([hit for _, hit in candidates])
        ready = sorted(
            {hit.session_id for (_, hit), f in zip(candidates, flags, strict=True) if not f}
        )
        if ready:
            # Their rows arrived while this batch ran: read them and apply the hits.
            states.update((await self.store.read(ready))[0])
        return {i for (i, _), f in zip(candidates, flags, strict=True) if f}

    async def hits(self, records: list[Record]) -> Output:
        """Process hit records (see ``hits_batch``, which the worker uses)."""
        async with self.hits_batch(records) as out:
            return out

    @contextlib.asynccontextmanager
    async def hits_batch(self, records: list[Record]) -> AsyncIterator[Output]:
        """Process hit records; their sessions stay held in the gate until the block ends.

        The worker publishes the output inside the block: a close round of one of these
        sessions waits meanwhile, and a batch waits for a round closing one of them.
        """
        out = Output()
        parsed: list[tuple[Record, dict[str, Any]]] = []
        for rec in records:
            try:
                parsed.append((rec, parse_hit(rec.value)))
            except BadEvent as exc:
                self._dead(out, rec, "parse", str(exc))
        held = await self.gate.hold(h["session_id"] for _, h in parsed)
        try:
            if parsed:
                await self._apply_hits(out, parsed, len(records))
            yield out
        finally:
            self.gate.let_go(held)

    async def _apply_hits(
        self, out: Output, parsed: list[tuple[Record, dict[str, Any]]], n_records: int
    ) -> None:
        states, applied = await self.store.read(
            [], [(h["session_id"], h["hit_number"]) for _, h in parsed]
        )
        try:
            increments = hit_increments(
                {
                    c: [h.get(c) for _, h in parsed]
                    for c in ("hit_number", "hit_time", "event_action")
                }
            )
        except Exception as exc:  # noqa: BLE001 - a feature failure is per batch data
            for rec, _ in parsed:
                self._dead(out, rec, "features", f"{type(exc).__name__}: {exc}")
            return

        seen: dict[str, set[int]] = {}
        to_score: list[tuple[int, str, np.ndarray, float]] = []  # (index, sid, state, event ms)
        duplicates: list[tuple[str, int]] = []
        starts: dict[str, float] = {}
        converted_at: dict[str, int] = {}  # session -> index in to_score of its first target
        parked = await self._park(parsed, states)
        out.parked = len(parked)
        for i, (_, hit) in enumerate(parsed):
            if i in parked:
                continue
            sid, number = hit["session_id"], hit["hit_number"]
            st = states[sid]
            mine = seen.setdefault(sid, set())
            if applied[i] or number in mine:
                out.duplicates += 1
                duplicates.append((sid, number))
                continue
            mine.add(number)
            if number < st.state[MAX_HIT]:
                out.out_of_order += 1
            if st.closed:
                out.late += 1
            before = st.state[TARGETS]
            st.state = combine(st.state, increments[i])
            # A conversion after an inactivity close supersedes its not-converted outcome.
            if before == 0 and st.state[TARGETS] > 0 and not _converted(st.outcome):
                converted_at[sid] = len(to_score)
            if sid not in starts:
                starts[sid] = epoch_ms(st.start) if st.start else 0.0
            to_score.append((i, sid, st.state.copy(), hit_event_ms(starts[sid], hit["hit_time"])))

        writes: dict[str, HitWrite] = {}
        if to_score:
            model = self.model
            vecs = np.vstack([cast(np.ndarray, states[sid].vector) for _, sid, _, _ in to_score])
            try:
                probs = model.score_in_session(vecs, np.vstack([s for _, _, s, _ in to_score]))
            except Exception as exc:  # noqa: BLE001 - a model failure is per batch data
                for i, _, _, _ in to_score:
                    self._dead(out, parsed[i][0], "score", f"{type(exc).__name__}: {exc}")
                return
            latest = {sid: states[sid].latest for _, sid, _, _ in to_score}
            stamp = now_iso()
            for k, ((i, sid, state, event_ms), p) in enumerate(zip(to_score, probs, strict=True)):
                rec, hit = parsed[i]
                st = states[sid]
                event_time = iso_from_ms(event_ms) if st.start else None
                w = writes.setdefault(
                    sid,
                    HitWrite(
                        session_id=sid,
                        state=state,
                        applied=[],
                        scores=[],
                        partition=st.partition if st.partition is not None else rec.partition,
                        event_ms=event_ms,
                        closed=st.closed,
                    ),
                )
                if converted_at.get(sid) == k:
                    outcome = orjson.dumps(
                        outcome_event(
                            session_id=sid,
                            client_id=st.client_id,
                            outcome="converted",
                            hit_number=hit["hit_number"],
                            event_time=event_time,
                            last_score=latest[sid],
                        )
                    )
                    w.outcome = outcome
                    out.outcomes.append((sid, outcome))
                event = score_event(
                    session_id=sid,
                    client_id=st.client_id,
                    probability=float(p),
                    model_version=model.version,
                    trigger="hit",
                    hit_number=hit["hit_number"],
                    event_time=event_time,
                    scored_at=stamp,
                )
                payload = orjson.dumps(event)
                latest[sid] = payload
                w.state = state
                w.probability = float(p)
                w.points.append(float(p))
                w.event_ms = max(w.event_ms, event_ms)
                w.applied.append(hit["hit_number"])
                w.scores.append((history_field("hit", hit["hit_number"]), payload))
                out.score(sid, payload, "hit")
                if rec.timestamp_ms is not None:
                    out.event_ts_ms.append(rec.timestamp_ms)
        updates = list(writes.values())
        # A parked hit counts as an event once it is applied.
        events = n_records - out.parked
        await self.store.write([], updates, self._raise_marks("hits", updates), events=events)
        if duplicates:
            copies = await self.store.stored_scores(
                [(sid, history_field("hit", n)) for sid, n in duplicates]
            )
            for (sid, number), copy in zip(duplicates, copies, strict=True):
                if copy is not None:
                    out.score(sid, copy, "hit")
                stored = states[sid].outcome
                if stored is not None and orjson.loads(stored).get("hit_number") == number:
                    out.outcomes.append((sid, stored))

    def _raise_marks(
        self, kind: str, writes: list[SessionWrite] | list[HitWrite]
    ) -> dict[tuple[str, int], tuple[float, float]]:
        """Raise each partition's event-time high-water mark of one input topic."""
        wall = time.time() * 1000.0
        changed: dict[tuple[str, int], tuple[float, float]] = {}
        for w in writes:
            key = (kind, w.partition)
            current = self.watermarks.get(key)
            if current is None or w.event_ms > current[0]:
                self.watermarks[key] = changed[key] = (w.event_ms, wall)
        return changed

    async def event_time(
        self, partition: int, behind: Collection[str] = frozenset()
    ) -> float | None:
        """Return a partition's event time now in ms, or None while it is not known."""
        return (await self.event_times({partition: behind}))[partition]

    async def event_times(self, behind: Mapping[int, Collection[str]]) -> dict[int, float | None]:
        """Return partitions' event times now in ms (None while one is not known).

        Each input topic has a high-water mark, moved on by the wall clock while that
        topic is quiet. While both topics are active the partition's event time is the
        lower mark, so a backlog read faster on one topic than on the other closes
        nothing early; a topic quiet for IDLE_MS no longer holds the other back (its
        sessions' later events are hits, which it would never see). A topic in
        ``behind[partition]`` (its partition has records not read yet) is never quiet,
        however long since its last event: under a backlog the worker may not reach a
        partition's hits for a while, and those hits must not find their sessions
        closed. Until both topics have a mark there is no event time.
        """
        stored = await self.store.watermarks(list(behind))
        wall_now = time.time() * 1000.0
        return {
            partition: self._event_time(partition, stored[partition], late_kinds, wall_now)
            for partition, late_kinds in behind.items()
        }

    def _event_time(
        self,
        partition: int,
        stored: dict[str, tuple[float, float]],
        behind: Collection[str],
        wall_now: float,
    ) -> float | None:
        moved: dict[str, float] = {}
        active: list[float] = []
        for kind in INPUT_KINDS:
            key = (kind, partition)
            mark = max(self.watermarks.get(key, (-1.0, 0.0)), stored.get(kind, (-1.0, 0.0)))
            if mark[0] < 0:
                return None
            self.watermarks[key] = mark
            if kind in behind:
                active.append(mark[0])
                continue
            moved[kind] = mark[0] + max(0.0, wall_now - mark[1])
            if wall_now - mark[1] < IDLE_MS:
                active.append(moved[kind])
        return min(active) if active else max(moved.values())

    async def close_horizon(
        self, behind: Mapping[int, Collection[str]], gap_ms: float
    ) -> dict[int, float]:
        """Return, by partition, the last-event time before which a session is idle.

        ``behind`` maps each partition to the input kinds with records not read yet
        (see ``event_times``); a partition without an event time yet is left out.
        """
        now = await self.event_times(behind)
        return {p: ms - gap_ms for p, ms in now.items() if ms is not None}

    async def close_due(self, upto: Mapping[int, float], limit: int = 1000) -> Output:
        """Close sessions whose last event is before ``upto`` of their partition.

        At most ``limit`` sessions are closed per call; each is marked closed as its
        final score is stored, so a hit read after that is late. The caller publishes
        the output, then calls ``finish_close`` with ``out.closed``.
        """
        async with self.closing(upto, limit) as out:
            return out

    @contextlib.asynccontextmanager
    async def closing(self, upto: Mapping[int, float], limit: int = 1000) -> AsyncIterator[Output]:
        """``close_due``, its sessions held in the gate until the block ends.

        The worker publishes the output inside the block, so a late hit for one of
        these sessions is applied after the close's events are out. A session a hits
        batch holds now is left for the next sweep.
        """
        out = Output()
        due_by_partition = await self.store.due(upto, limit)
        due = [row for rows in due_by_partition.values() for row in rows]
        free = set(self.gate.hold_free(sid for sid, _ in due))
        try:
            await self._close(out, due_by_partition, [row for row in due if row[0] in free])
            # Hold on only to the sessions being closed.
            closing = {sid for sids in out.closed.values() for sid in sids}
            self.gate.let_go(free - closing)
            free = closing
            yield out
        finally:
            self.gate.let_go(free)

    async def _close(
        self,
        out: Output,
        due_by_partition: Mapping[int, list[tuple[str, float]]],
        due: list[tuple[str, float]],
    ) -> None:
        if not due:
            return
        end_field = history_field("session_end", None)
        # Read together: a session's state, and its final score if a crash came between
        # storing and publishing it.
        (states, _), copies = await asyncio.gather(
            self.store.read([sid for sid, _ in due]),
            self.store.stored_scores([(sid, end_field) for sid, _ in due]),
        )
        stored = {sid: copy for (sid, _), copy in zip(due, copies, strict=True)}
        # A session whose start score is not out yet, or which is being released, is not
        # closed: the hits parked for it are applied at its release and move its last
        # event on. (Under a backlog its hits may have been read long before it, and the
        # event time is far past its start.) It is looked at again by the next sweep.
        due = [
            (sid, ms)
            for sid, ms in due
            if sid not in self.releasing and (states[sid].ready or not states[sid].known)
        ]
        if not due:
            return
        closing = {sid for sid, _ in due}
        for partition, rows in due_by_partition.items():
            sids_here = [sid for sid, _ in rows if sid in closing]
            if sids_here:
                out.closed[partition] = sids_here
        closes: list[CloseWrite] = []
        fresh: list[tuple[str, float]] = []
        for sid, last_ms in due:
            st, copy = states[sid], stored[sid]
            if not st.known or st.vector is None:
                continue  # its state expired: nothing left to close
            if copy is not None:  # closed before a crash: the same copies again
                out.score(sid, copy, "session_end")
                if st.outcome is not None and b'"not_converted"' in st.outcome:
                    out.outcomes.append((sid, st.outcome))
                continue
            fresh.append((sid, last_ms))
        if fresh:
            model = self.model
            vecs = np.vstack([cast(np.ndarray, states[sid].vector) for sid, _ in fresh])
            probs = model.score_in_session(vecs, np.vstack([states[sid].state for sid, _ in fresh]))
            stamp = now_iso()
            for (sid, last_ms), p in zip(fresh, probs, strict=True):
                st = states[sid]
                event_time = iso_from_ms(last_ms)
                payload = orjson.dumps(
                    score_event(
                        session_id=sid,
                        client_id=st.client_id,
                        probability=float(p),
                        model_version=model.version,
                        trigger="session_end",
                        hit_number=None,
                        event_time=event_time,
                        scored_at=stamp,
                    )
                )
                outcome = None
                if st.outcome is None:
                    outcome = orjson.dumps(
                        outcome_event(
                            session_id=sid,
                            client_id=st.client_id,
                            outcome="not_converted",
                            hit_number=None,
                            event_time=event_time,
                            last_score=st.latest,
                        )
                    )
                    out.outcomes.append((sid, outcome))
                hits_applied = int(st.state[STATE_INDEX["hits"]])
                closes.append(CloseWrite(sid, payload, end_field, outcome, float(p), hits_applied))
                out.score(sid, payload, "session_end")
            await self.store.prepare_close(closes)

    async def finish_close(self, closed: Mapping[int, list[str]]) -> None:
        """Take closed sessions out of the open sets once their final events are on Kafka."""
        await self.store.finish_close(closed)
