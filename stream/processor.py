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
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import orjson

from artifact import ConversionModel
from contracts import limits
from contracts.history import history_entry, history_field
from contracts.scores import score_event
from contracts.times import iso_from_ms, now_ms, utc_iso
from features.columns import SESSION_COLUMNS
from features.hits import STATE_INDEX, combine_values, empty_state, hit_increments
from features.session import rows_to_columns
from features.target import is_target_action
from stream.cache import Cached, SessionCache
from stream.dashboard import channel_values
from stream.gate import SessionGate
from stream.logic import (
    BadEvent,
    epoch_ms,
    hit_event_ms,
    outcome_event,
    parse_hit,
    parse_session,
    start_time,
)
from stream.state import (
    CloseWrite,
    HitWrite,
    Offsets,
    ParkedHit,
    RedisStore,
    SessionState,
    SessionWrite,
)

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
    # sessions to release after publishing, each with its partition
    released: dict[str, int] = field(default_factory=dict)
    dead_letters: list[tuple[str, bytes]] = field(default_factory=list)  # (stage, JSON)
    refusals: collections.Counter[tuple[str, str]] = field(
        default_factory=collections.Counter
    )  # dead letters by (stage, kind)
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
    )


async def _done(landed: Awaitable[object]) -> None:
    """Wait for a write to land, whatever it says."""
    await landed


def _counts(records: Sequence[Record]) -> dict[int, int]:
    """Count records by partition."""
    return dict(collections.Counter(r.partition for r in records))


def _partition(state: SessionState) -> int:
    """The partition a session's state was read from."""
    assert state.partition is not None, "a state read from the store has its partition"
    return state.partition


def _failure(exc: BaseException) -> str:
    """An exception as a dead letter's error: its type and a bounded message."""
    return f"{type(exc).__name__}: {str(exc)[: limits.ERROR_MAX_CHARS - 60]}"


class OutputTooLarge(ValueError):
    """An event the worker made is larger than any event it publishes may be."""


def _bounded(payload: bytes) -> bytes:
    """Return an event to publish, or raise when it is over ``OUTPUT_MAX_BYTES``."""
    if len(payload) > limits.OUTPUT_MAX_BYTES:
        raise OutputTooLarge(f"event of {len(payload)} bytes, more than {limits.OUTPUT_MAX_BYTES}")
    return payload


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
        if before == 0 and state[TARGETS] > 0 and not _converted(st.outcome):
            walk.converted_at[sid] = len(walk.to_score)
        if sid not in starts:
            starts[sid] = epoch_ms(st.start) if st.start else 0.0
        walk.to_score.append((i, sid, state, hit_event_ms(starts[sid], hit["hit_time"])))
    return walk


def dead_letter(record: Record, stage: str, error: str, kind: str = "invalid") -> bytes:
    """Describe a record that could not be processed, with its original bytes.

    The letter always fits its topic: it keeps at most
    ``DEAD_LETTER_ORIGINAL_MAX_BYTES`` of the original (``original_truncated`` says when
    it was cut; ``original_bytes`` and ``original_sha256`` are the whole record's), a
    key of at most ``ID_MAX_CHARS`` and an error of at most ``ERROR_MAX_CHARS``.
    """
    raw = record.value or b""
    kept = raw[: limits.DEAD_LETTER_ORIGINAL_MAX_BYTES]
    key = None if record.key is None else record.key[: limits.ID_MAX_CHARS]
    return orjson.dumps(
        {
            "source_topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": None if key is None else key.decode("utf-8", "replace"),
            "stage": stage,
            "kind": kind,
            "error": error[: limits.ERROR_MAX_CHARS],
            "original_base64": base64.b64encode(kept).decode(),
            "original_text": kept.decode("utf-8", "replace"),
            "original_bytes": len(raw),
            "original_sha256": hashlib.sha256(raw).hexdigest(),
            "original_truncated": len(kept) < len(raw),
            "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
    )


@dataclass
class SessionsRun:
    """Session batches processed one after another, each read before the last lands.

    A batch's read may go to Redis before the writes of the batches just ahead of it;
    the run remembers the start scores those batches stored, so a row seen again in a
    later batch is a duplicate with the identical copy. It also collects the sessions
    to release once the run's start scores are on Kafka.
    """

    started: dict[str, bytes] = field(default_factory=dict)  # start score JSON by session
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
    # the read of its sessions, sent and not yet awaited (``sessions_read``)
    reading: Awaitable[tuple[dict[str, SessionState], list[bool]]] | None = None
    writes: list[SessionWrite] = field(default_factory=list)
    marks: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    computed: bool = False  # its writes are made: it has something to store


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
    # the state read, sent and not yet awaited (``hits_read``)
    reading: Awaitable[tuple[dict[str, SessionState], list[bool]]] | None = None
    updates: list[HitWrite] = field(default_factory=list)
    marks: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    duplicates: list[tuple[str, int]] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)  # records by partition
    events: dict[int, int] = field(default_factory=dict)  # the same, less the parked hits
    known: set[str] = field(default_factory=set)  # sessions the run or the cache knew: not read
    cached: dict[str, Cached] = field(default_factory=dict)  # those the cache knew
    failed: bool = False  # a feature or model failure: all dead letters, nothing to store


INPUT_KINDS = ("sessions", "hits")
# A hits write sets its session's TTL again once this share of the TTL has passed since
# it was last set (the session start sets it; so does any write of a session the
# worker did not know).
TTL_REFRESH_SHARE = 0.25
START_WAIT_S = 2.0  # longest a hit waits for its session's start score in this worker
IDLE_MS = 5000.0  # an input topic without events for this long is quiet


class Processor:
    """Turns batches of records into state, scores and dead letters."""

    def __init__(
        self,
        model: ConversionModel,
        store: RedisStore,
        hits_topic: str = "ga.hits",
        cache_sessions: int = 50_000,
        cache_age_s: float = 600.0,
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
        # What Redis holds of this worker's sessions (stream/cache.py).
        self.cache = SessionCache(cache_sessions, cache_age_s)

    @contextlib.contextmanager
    def releasing_sessions(self, sids: Collection[str]) -> Iterator[None]:
        """Keep the close sweep off these sessions while their parked hits are applied."""
        self.releasing.update(sids)
        try:
            yield
        finally:
            self.releasing.subtract(sids)
            for sid in sids:
                if self.releasing[sid] <= 0:
                    del self.releasing[sid]

    def forget_state(self) -> None:
        """Forget what this worker knew of the sessions in Redis: Redis lost writes."""
        self.cache.clear()
        self.store.layout_recorded = False  # it may have lost that too
        self.forget_starting()

    def forget_starting(self) -> None:
        """Stop waiting for start scores that an abandoned fetch was to publish."""
        for started in self.starting.values():
            started.set()
        self.starting.clear()

    def _dead(
        self, out: Output, record: Record, stage: str, error: str, kind: str = "invalid"
    ) -> None:
        log.warning(
            "dead letter from %s[%d]@%d at %s: %s",
            record.topic,
            record.partition,
            record.offset,
            stage,
            error,
        )
        out.dead_letters.append((stage, dead_letter(record, stage, error, kind)))
        out.refusals[(stage, kind)] += 1

    async def sessions(self, records: list[Record]) -> Output:
        """Process session-start records: one batch, read, computed and written."""
        run = SessionsRun()
        batch = await self.sessions_read(self.sessions_parse(records))
        batch = await self.sessions_compute(batch, run)
        await (await self.sessions_write(batch, run))
        return batch.out

    def sessions_parse(self, records: list[Record]) -> SessionsBatch:
        """Parse a batch of session rows and score them; the bad ones become dead letters.

        A feature or model failure makes every row of the batch a dead letter.
        """
        batch = SessionsBatch(out=Output(), n_records=len(records), counts=_counts(records))
        parsed = batch.parsed
        for rec in records:
            try:
                parsed.append((rec, parse_session(rec.value)))
            except BadEvent as exc:
                self._dead(batch.out, rec, "parse", str(exc), exc.kind)
        if not parsed:
            return batch
        model = batch.model = self.model
        try:
            batch.vectors = model.session_vectors(
                rows_to_columns([row for _, row in parsed], SESSION_COLUMNS)
            )
            batch.probs = model.score_session_vectors(batch.vectors)
            if np.isfinite(batch.probs).all():
                return batch
        except Exception:  # noqa: BLE001 - found below, row by row
            pass
        self._score_rows_alone(batch)
        return batch

    def _score_rows_alone(self, batch: SessionsBatch) -> None:
        """Score a batch's rows one at a time; the rows that fail become dead letters."""
        model = self.model
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
                self._dead(batch.out, rec, stage, _failure(exc), "failed")
                continue
            kept.append((rec, row))
            vectors.append(vector[0])
            probs.append(p[0])
        batch.parsed = kept
        if kept:
            batch.vectors, batch.probs = np.vstack(vectors), np.asarray(probs)

    async def sessions_read(self, batch: SessionsBatch) -> SessionsBatch:
        """Nothing is read for session rows: their write stores only those Redis does not
        hold yet and says which it held (``sessions_write``). Kept as the first step of
        a batch, as for hits."""
        return batch

    async def sessions_compute(self, batch: SessionsBatch, run: SessionsRun) -> SessionsBatch:
        """Find a read batch's new sessions, and make their start scores and writes.

        A session already stored, in Redis or by an earlier batch of the run, is a
        duplicate: its stored start score is published again, the very same copy.
        """
        if not batch.parsed:
            return batch
        out, model, vectors, probs = batch.out, batch.model, batch.vectors, batch.probs
        assert model is not None and vectors is not None and probs is not None
        hfield = history_field("session_start", None)
        stamp_ms = now_ms()
        stamp = utc_iso(stamp_ms)
        writes: dict[str, SessionWrite] = {}
        sids = [row["session_id"] for _, row in batch.parsed]
        for i, (rec, row) in enumerate(batch.parsed):
            sid = sids[i]
            if (
                sid in writes
                or sid in run.started
                or self.cache.get(sid, rec.partition) is not None
            ):
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
                history=history_entry(probs[i], model.version, True, stamp_ms),
                partition=rec.partition,
                event_ms=epoch_ms(start),
                probability=float(probs[i]),
                channel=channel_values(row),
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
                await self.store.stored_scores([(s, where[s], hfield) for s in from_redis]),
                strict=True,
            )
        )
        for sid in again:
            copy = run.started.get(sid, stored.get(sid))
            if copy is not None:
                if sid in run.started:
                    batch.from_run[sid] = len(out.scores)
                out.score(sid, copy, "session_start")
        batch.writes = list(writes.values())
        run.started.update((w.session_id, w.score_json) for w in batch.writes)
        batch.marks = self._raise_marks("sessions", batch.writes)
        batch.computed = True
        out.released = where
        run.released.update(where)
        for sid in out.released:
            self.starting.setdefault(sid, asyncio.Event())
        return batch

    async def sessions_write(self, batch: SessionsBatch, run: SessionsRun) -> Awaitable[None]:
        """Send a computed batch's write to Redis (one atomic call); return what to await.

        Awaiting it waits for the write to land; then a row Redis held already (a
        redelivery the worker did not know of) has its stored start score published
        instead of the one just made, the very same copy as the first time.
        """
        if not batch.computed:
            return asyncio.sleep(0)
        landed = await self.store.send_write(batch.writes, [], batch.marks, events=batch.counts)
        return self._sessions_landed(batch, run, landed)

    async def _sessions_landed(
        self, batch: SessionsBatch, run: SessionsRun, landed: Awaitable[set[str]]
    ) -> None:
        held = await landed
        out = batch.out
        # What Redis now holds of the sessions this write stored.
        for w in batch.writes:
            if w.session_id not in held:
                self.cache.put(w.session_id, _stored_session(w), set())
        if held:
            where = {row["session_id"]: rec.partition for rec, row in batch.parsed}
            order = sorted(held)
            hfield = history_field("session_start", None)
            stored = await self.store.stored_scores([(s, where[s], hfield) for s in order])
            for sid, copy in zip(order, stored, strict=True):
                out.duplicates += 1
                at = batch.placed[sid]
                if copy is None:  # it expired since: what was just made is all there is
                    continue
                out.scores[at] = (sid, copy)
                run.started[sid] = copy
        # Copies taken from the run before an earlier batch found its row held.
        for sid, at in batch.from_run.items():
            out.scores[at] = (sid, run.started[sid])

    async def release(self, sids: Mapping[str, int]) -> list[Record]:
        """Let hits through for sessions whose start score is on Kafka; return parked hits.

        The caller applies the parked hits (``hits``), publishes what they produce and
        then drops them with ``forget_pending``. Until then they stay in Redis: after a
        crash the session's row is delivered again and releases them again.
        """
        parked, ready = await self.store.release_sessions(sids)
        for sid in ready:
            known = self.cache.get(sid, sids[sid])
            if known is not None:
                known.state.ready = True
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

    async def forget_pending(self, sids: Mapping[str, int]) -> None:
        """Drop parked hits once they are applied and their scores published."""
        await self.store.forget_pending(sids)

    async def _park(
        self,
        parsed: list[tuple[Record, dict[str, Any]]],
        states: dict[str, Any],
        refused: set[int],
        out: Output,
    ) -> set[int]:
        """Park the hits whose session is not ready; return their indexes in ``parsed``.

        A session whose row this worker is publishing right now is waited for (at most
        START_WAIT_S) instead. Parking is one Redis call for the whole batch; a session
        that turns out to be ready by then is read again and its hits are applied. A hit
        whose session has PARKED_HITS_MAX waiting already is a dead letter, added to
        ``refused``. The hits in ``refused`` are not parked.
        """
        waiting = {
            h["session_id"]
            for i, (_, h) in enumerate(parsed)
            if not states[h["session_id"]].ready and i not in refused
        }
        if not waiting:
            return set()
        where = {h["session_id"]: rec.partition for rec, h in parsed}
        starting = [self.starting[sid].wait() for sid in waiting if sid in self.starting]
        if starting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*starting), START_WAIT_S)
            states.update((await self.store.read({s: where[s] for s in sorted(waiting)}))[0])
        candidates = [
            (
                i,
                ParkedHit(
                    h["session_id"], rec.value or b"", rec.partition, rec.offset, rec.timestamp_ms
                ),
            )
            for i, (rec, h) in enumerate(parsed)
            if not states[h["session_id"]].ready and i not in refused
        ]
        if not candidates:
            return set()
        flags = await self.store.park([hit for _, hit in candidates])
        ready = sorted(
            {hit.session_id for (_, hit), f in zip(candidates, flags, strict=True) if f is False}
        )
        if ready:
            # Their rows arrived while this batch ran: read them and apply the hits.
            states.update((await self.store.read({s: where[s] for s in ready}))[0])
        for (i, _), f in zip(candidates, flags, strict=True):
            if f is None:
                error = f"session already has {limits.PARKED_HITS_MAX} hits waiting for its row"
                self._dead(out, parsed[i][0], "park", error, "parked_full")
                refused.add(i)
        return {i for (i, _), f in zip(candidates, flags, strict=True) if f is True}

    async def hits(self, records: list[Record]) -> Output:
        """Process hit records (see ``hits_batch``)."""
        async with self.hits_batch(records) as out:
            return out

    @contextlib.asynccontextmanager
    async def hits_batch(self, records: list[Record]) -> AsyncIterator[Output]:
        """Process hit records; their sessions stay held in the gate until the block ends.

        The worker publishes the output inside the block: a close round of one of these
        sessions waits meanwhile, and a batch waits for a round closing one of them.
        """
        async with self.hits_run() as run:
            work = await self.hits_compute(await self.hits_read(self.hits_parse(records), run), run)
            await (await self.hits_write(work, run))
            yield work.out

    @contextlib.asynccontextmanager
    async def hits_run(self) -> AsyncIterator[HitsRun]:
        """A run of hits batches, which may overlap: see ``HitsRun``.

        Its sessions are held in the gate until the block ends, so the close sweep
        leaves them alone while any of the run's writes may still be under way.
        """
        run = HitsRun()
        try:
            yield run
        finally:
            self.gate.let_go(run.held)

    def hits_parse(self, records: list[Record]) -> HitsBatch:
        """Parse a batch of hit records; the bad ones become dead letters."""
        batch = HitsBatch(out=Output(), n_records=len(records), counts=_counts(records))
        for rec in records:
            try:
                batch.parsed.append((rec, parse_hit(rec.value)))
            except BadEvent as exc:
                self._dead(batch.out, rec, "parse", str(exc), exc.kind)
        return batch

    async def hits_read(self, batch: HitsBatch, run: HitsRun) -> HitsBatch:
        """Hold a batch's sessions for the run, then send the read of their state.

        A session held by a close round is waited for; one the run holds already is not.
        The read's reply is awaited by ``hits_compute``: meanwhile the worker may compute
        the batches ahead of this one (whose effects the run keeps) and send their writes.
        """
        sids = {h["session_id"] for _, h in batch.parsed}
        need = sids - run.held
        if need:
            run.held.update(await self.gate.hold(need))
        if batch.parsed:
            # Sessions the run or the cache knows are not read: what they say is what
            # Redis holds, or will once the run's writes land.
            where: dict[str, int] = {}
            for rec, h in batch.parsed:
                sid = h["session_id"]
                if sid in where or sid in batch.known:
                    continue
                if sid not in run.sessions:
                    cached = self.cache.get(sid, rec.partition)
                    if cached is None:
                        where[sid] = rec.partition
                        continue
                    batch.cached[sid] = cached
                batch.known.add(sid)
            # A session's latest score goes into the outcome of its conversion: read it
            # only where a hit of the batch is a target.
            batch.reading = await self.store.send_read(
                where,
                [
                    (h["session_id"], h["hit_number"])
                    for _, h in batch.parsed
                    if h["session_id"] in where
                ],  # noqa: E501
                latest={
                    h["session_id"]
                    for _, h in batch.parsed
                    if is_target_action(h.get("event_action"))
                },
            )
        return batch

    async def hits_compute(self, batch: HitsBatch, run: HitsRun) -> HitsBatch:
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
        await self._apply_hits(batch, states, applied)
        for w in batch.updates:
            st = states[w.session_id]
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
                ttl_at = None if w.refresh_ttl else self.cache.ttl_set_at(w.session_id)
                self.cache.put(w.session_id, st, known.applied, ttl_at)
        return batch

    async def hits_write(
        self, batch: HitsBatch, run: HitsRun, offsets: Offsets | None = None
    ) -> Awaitable[None]:
        """Send a computed batch's write to Redis (one atomic call); return what to await.

        Awaiting it waits for the write to land, then finds the copies of its duplicates'
        scores. A run writes its batches one after the other, in order. ``offsets`` (the
        fetch's, with its last batch) raise the applied input offsets in the same call.
        """
        if batch.failed:
            if not offsets:
                return asyncio.sleep(0)
            return _done(await self.store.send_write([], [], offsets=offsets))
        landed = await self.store.send_write(
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
        stored = await self.store.stored_scores(
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

        def columns(hits: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
            return {c: [h.get(c) for h in hits] for c in ("hit_number", "hit_time", "event_action")}

        try:
            increments = hit_increments(columns([h for _, h in parsed]))
            if np.isfinite(increments).all():
                return cast(list[Any], increments.tolist())
        except Exception:  # noqa: BLE001 - found below, hit by hit
            pass
        rows: list[Any] = []
        for rec, hit in parsed:
            try:
                row = hit_increments(columns([hit])).tolist()[0]
                if not all(math.isfinite(x) for x in row):
                    raise ValueError("a feature is not a finite number")
                rows.append(row)
            except Exception as exc:  # noqa: BLE001 - one hit's feature failure
                self._dead(out, rec, "features", _failure(exc), "failed")
                rows.append(None)
        return rows

    async def _apply_hits(
        self, batch: HitsBatch, states: dict[str, SessionState], applied: list[bool]
    ) -> None:
        """Apply and score a read batch's hits; hits that fail alone become dead letters.

        A hit whose features, score or events fail is left out and the batch is walked
        again without it: the later hits of its session are combined without it too.
        """
        out, parsed = batch.out, batch.parsed
        rows = self._increments(out, parsed)
        refused = {i for i, row in enumerate(rows) if row is None}
        parked = await self._park(parsed, states, refused, out)
        out.parked = len(parked)
        # A parked hit counts once applied.
        batch.events = dict(batch.counts)
        for i in parked:
            batch.events[parsed[i][0].partition] -= 1
        while True:
            walk = _walk_hits(parsed, states, applied, rows, parked | refused)
            failed = await self._score_hits(batch, states, walk)
            if not failed:
                break
            for i, stage, error in failed:
                self._dead(out, parsed[i][0], stage, error, "failed")
                refused.add(i)
        out.duplicates += len(walk.duplicates)
        out.out_of_order += walk.out_of_order
        out.late += walk.late
        batch.duplicates = walk.duplicates
        batch.failed = bool(refused) and not batch.updates and not walk.duplicates
        batch.marks = self._raise_marks("hits", batch.updates)

    async def _score_hits(
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
        model = self.model
        vecs = np.vstack([cast(np.ndarray, states[sid].vector) for _, sid, _, _ in to_score])
        hit_states = np.array([s for _, _, s, _ in to_score], dtype=np.float64)
        try:
            probs = model.score_in_session(vecs, hit_states)
            ok = bool(np.isfinite(probs).all())
        except Exception:  # noqa: BLE001 - found below, hit by hit
            ok = False
        if not ok:
            failed, alone = [], []
            for k, (i, _, _, _) in enumerate(to_score):
                try:
                    p = model.score_in_session(vecs[k : k + 1], hit_states[k : k + 1])
                    if not np.isfinite(p).all():
                        raise ValueError("the model's probability is not a finite number")
                    alone.append(p[0])
                except Exception as exc:  # noqa: BLE001 - one hit's model failure
                    failed.append((i, "score", _failure(exc)))
            if failed:
                return failed
            probs = np.asarray(alone)  # only the batch as a whole failed
        latest = {sid: states[sid].latest for _, sid, _, _ in to_score}
        # A conversion's outcome carries the score before it; the read brought it
        # for every session with a target hit, this reads any other.
        unread = [sid for sid in converted_at if not states[sid].has_latest]
        where = {sid: _partition(states[sid]) for sid in unread}
        latest.update(zip(unread, await self.store.latest_scores(where), strict=True))
        last: dict[str, list[float]] = {}  # each session's state after its last hit
        writes: dict[str, HitWrite] = {}
        events = Output()
        failed = []
        stamp_ms = now_ms()
        stamp = utc_iso(stamp_ms)
        for k, ((i, sid, state, event_ms), p) in enumerate(zip(to_score, probs, strict=True)):
            rec, hit = parsed[i]
            st = states[sid]
            event_time = iso_from_ms(event_ms) if st.start else None
            try:
                outcome = None
                if converted_at.get(sid) == k:
                    outcome = _bounded(
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
                payload = _bounded(
                    orjson.dumps(
                        score_event(
                            session_id=sid,
                            client_id=st.client_id,
                            probability=probability,
                            model_version=model.version,
                            trigger="hit",
                            hit_number=hit["hit_number"],
                            event_time=event_time,
                            scored_at=stamp,
                        )
                    )
                )
            except Exception as exc:  # noqa: BLE001 - one hit's events cannot be made
                failed.append((i, "serialise", _failure(exc)))
                continue
            w = writes.get(sid)
            if w is None:
                w = writes[sid] = HitWrite(
                    session_id=sid,
                    state=empty_state(),
                    applied=[],
                    scores=[],
                    partition=st.partition if st.partition is not None else rec.partition,
                    event_ms=event_ms,
                    closed=st.closed,
                    converted=st.outcome is not None,
                    refresh_ttl=self.cache.ttl_due(
                        sid, _partition(st), self.store.ttl * TTL_REFRESH_SHARE
                    ),
                )
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
                history_entry(probability, model.version, event_ms if st.start else None, stamp_ms)
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

    def _raise_marks(
        self, kind: str, writes: list[SessionWrite] | list[HitWrite]
    ) -> dict[tuple[str, int], tuple[float, float]]:
        """Raise each partition's event-time high-water mark of one input topic.

        A mark never passes the wall clock by more than ``FUTURE_SLACK_S``: one hit with a
        start and a hit_time far ahead must not close every open session early.
        """
        wall = time.time() * 1000.0
        ceiling = wall + limits.FUTURE_SLACK_S * 1000.0
        changed: dict[tuple[str, int], tuple[float, float]] = {}
        for w in writes:
            key = (kind, w.partition)
            current = self.watermarks.get(key)
            event_ms = min(w.event_ms, ceiling)
            if current is None or event_ms > current[0]:
                self.watermarks[key] = changed[key] = (event_ms, wall)
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
        where = {sid: p for p, rows in due_by_partition.items() for sid, _ in rows}
        # A session the cache knows open has no final score stored: it is not read.
        states: dict[str, SessionState] = {}
        for sid, _ in due:
            cached = self.cache.get(sid, where[sid])
            if cached is not None and not cached.state.closed:
                states[sid] = dataclasses.replace(cached.state)
        unknown = [sid for sid, _ in due if sid not in states]
        (read, _), copies = await asyncio.gather(
            self.store.read({sid: where[sid] for sid in unknown}),
            self.store.stored_scores([(sid, where[sid], end_field) for sid in unknown]),
        )
        states.update(read)
        stored: dict[str, bytes | None] = dict.fromkeys(states)
        stored.update(zip(unknown, copies, strict=True))
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
            stamp_ms = now_ms()
            stamp = utc_iso(stamp_ms)
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
                entry = history_entry(p, model.version, last_ms, stamp_ms)
                closes.append(CloseWrite(sid, payload, end_field, outcome, entry, where[sid]))
                out.score(sid, payload, "session_end")
            await self.store.prepare_close(closes)
            for c in closes:
                st = states[c.session_id]
                st.closed, st.latest, st.has_latest = True, c.score_json, True
                if c.outcome is not None:
                    st.outcome = c.outcome
                known = self.cache.get(c.session_id, c.partition)
                if known is not None:  # a state read from Redis is not cached (_RunSession)
                    self.cache.put(c.session_id, st, known.applied)

    async def finish_close(self, closed: Mapping[int, list[str]]) -> None:
        """Take closed sessions out of the open sets once their final events are on Kafka."""
        await self.store.finish_close(closed)
        for sids in closed.values():
            self.cache.drop(sids)
