"""The Redis session store: per-session state, applied hits, parked hits and scores.

Layout (keys from ``contracts.keys.Layout``, under the hash tag of the session's input
partition, with the session TTL): one hash per session holds all of it:
- ``row``, what its row gave, packed (``contracts.keys.pack_row``: start, client id,
  session features, channel); ``hs``, the hit-state counters as float64 bytes; ``ready``
  once its start score is published, ``closed`` once closed, ``outcome`` (its
  OutcomeEvent JSON) and ``conv`` once converted;
- its scores: one field per score, ``trigger:hit_number``, in compact form
  (``contracts.history.history_entry``; the JSON is made again from it), and ``latest``,
  the name of the latest one's field. A hit is applied exactly when its score is there
  (one atomic write stores both), so a redelivery knows which hits not to apply again.
Beside it, a list of the hits that arrived before its row (``ParkedHit``, packed).

A batch reads with one call per group of partitions (all of them on a single Redis,
each partition alone on Redis Cluster: its keys share one slot) and writes with one Lua
call per Redis server: on Redis Cluster, one per master, a part per partition it holds.
Each call is atomic, so a crash leaves either all of a call's writes of a batch or none
of them. The scripts are in ``stream/scripts.py``; how their calls reach the right
server, fenced and retried, in ``stream/redis_calls.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from redis.commands.core import AsyncScript

from contracts import keys, limits
from contracts.dashboard import minute
from contracts.history import latest_from_hash, score_from_history
from features.hits import empty_state
from stream import dashboard
from stream.nodes import NodeLanes
from stream.redis_calls import (
    InfrastructureError,
    Offsets,
    RedisLost,
    ScriptCalls,
    WriteCall,
    fenced,
)
from stream.scripts import PARK_SCRIPT, READ_SCRIPT, RELEASE_SCRIPT, STORED_SCRIPT

__all__ = [
    "CloseWrite",
    "HitWrite",
    "InfrastructureError",
    "Offsets",
    "ParkedHit",
    "RedisLost",
    "RedisStore",
    "SessionState",
    "SessionWrite",
]

log = logging.getLogger(__name__)

# The hash fields a batch reads of each session; the packed counters come last.
READ_FIELDS = [keys.ROW_FIELD, "ready", "closed", "outcome", keys.HIT_STATE_FIELD]
_READ_LATEST = [*READ_FIELDS, keys.LATEST_FIELD]
_LATEST_AT = len(_READ_LATEST)  # its place (from 1) in READ_SCRIPT's fields
_N_META = 4
_EMPTY_STATE: list[float] = empty_state().tolist()  # what a counter is before any hit
_PACKED_EMPTY = keys.pack_hit_state(_EMPTY_STATE)
_STATE_BYTES = len(_PACKED_EMPTY)


@dataclass
class ParkedHit:
    """A hit read before its session row, with where it was read from."""

    session_id: str
    raw: bytes  # the record's value, as consumed
    partition: int = -1
    offset: int = -1
    timestamp_ms: float | None = None

    def pack(self) -> bytes:
        """Encode the hit for the pending list."""
        return msgpack.packb([self.partition, self.offset, self.timestamp_ms, self.raw])

    @classmethod
    def unpack(cls, session_id: str, item: bytes) -> ParkedHit:
        """Decode an entry of the pending list; a bare value is kept as the raw hit."""
        try:
            partition, offset, timestamp_ms, raw = msgpack.unpackb(item)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.UnpackException):
            return cls(session_id, item)
        if not isinstance(raw, bytes) or not isinstance(partition, int):
            return cls(session_id, item)
        return cls(session_id, raw, partition, offset, timestamp_ms)


@dataclass
class SessionState:
    """What the store knows of one session."""

    known: bool  # its session row has been stored
    ready: bool  # its session-start score is published: hits may be applied
    client_id: str | None
    start: str | None
    vector: np.ndarray | None
    state: np.ndarray
    partition: int | None = None
    closed: bool = False  # closed for inactivity
    latest: bytes | None = None  # the latest ScoreEvent JSON (when read: ``has_latest``)
    has_latest: bool = True  # False: the read left the latest score out
    outcome: bytes | None = None  # the OutcomeEvent JSON, once known


@dataclass
class SessionWrite:
    """A session row's first appearance: its fields and its session-start score."""

    session_id: str
    client_id: str | None
    start: str
    vector: np.ndarray
    score_json: bytes
    history_field: str
    history: bytes | None = None  # the score's history entry (None: keep the JSON)
    partition: int = 0
    event_ms: float = 0.0
    probability: float = 0.0
    channel: list[str] | None = None  # dashboard.channel_values of its row


@dataclass
class HitWrite:
    """A session's state after a batch of hits, with the scores they produced."""

    session_id: str
    state: np.ndarray
    applied: list[int]
    scores: list[tuple[str, bytes]]  # (history field, ScoreEvent JSON), in order
    partition: int = 0
    event_ms: float = 0.0  # the latest event time among the batch's hits
    outcome: bytes | None = None  # OutcomeEvent JSON when a hit of the batch converted
    closed: bool = False  # a late hit: the session stays closed
    converted: bool = False  # converted in an earlier batch: not hot any more
    refresh_ttl: bool = True  # set the session's TTL again (else it was set lately)
    probability: float = 0.0  # the latest of the batch's scores
    entries: list[bytes] = field(default_factory=list)  # history entries of ``scores``, if any


@dataclass
class CloseWrite:
    """A session closed for inactivity: its final score and, unless converted, outcome."""

    session_id: str
    score_json: bytes
    history_field: str
    outcome: bytes | None
    history: bytes | None = None  # the final score's history entry (None: keep the JSON)
    partition: int = 0


# Sessions by their input partition: session id -> partition.
Sessions = Mapping[str, int]


class RedisStore:
    """Reads and writes session state in Redis (a single server, or a Redis Cluster)."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        ttl_s: int,
        retries: int,
        dashboard_retention_s: int = 30 * 86400,
        partitions: int = 6,
        lanes: NodeLanes | None = None,
    ) -> None:
        """``lanes``, on Redis Cluster, gives the lane of the master holding a key's slot
        (``ScriptCalls``)."""
        self.r = client
        self.prefix = prefix
        self.layout = keys.Layout(prefix, partitions)
        self.ttl = ttl_s
        # Numbers the scripts hand straight to Redis go as text: a Lua number given to
        # redis.call is formatted with snprintf first, a tenth of Redis's time in a probe.
        self._ttl = str(ttl_s)
        dash_cfg = msgpack.packb(dashboard.config(ttl_s, dashboard_retention_s), use_bin_type=False)
        self.calls = ScriptCalls(client, self.layout, retries, dash_cfg, lanes)
        self._park = AsyncScript(client, PARK_SCRIPT)
        self._release = AsyncScript(client, RELEASE_SCRIPT)
        self._stored = AsyncScript(client, STORED_SCRIPT)
        self._read = AsyncScript(client, READ_SCRIPT)
        self.layout_recorded = False  # the layout is recorded in Redis (``record_layout``)

    @property
    def expected(self) -> dict[tuple[str, int], int]:
        """The fence: the applied offsets this worker knows Redis holds, by (input kind,
        partition). Every write checks them first and raises RedisLost where Redis holds
        less."""
        return self.calls.expected

    @property
    def clustered(self) -> bool:
        """Whether calls go per partition, to the node holding it (Redis Cluster)."""
        return self.calls.clustered

    def dash(self, partition: int) -> str:
        """Return the prefix of the dashboard aggregates a partition's sessions count in."""
        return self.calls.dashes[partition]

    async def record_layout(self) -> None:
        """Record the key layout where the API looks for it (``keys.layout_key``).

        Done before the first write: the API finds a session's keys by the partition
        count recorded here.
        """

        async def run() -> Any:
            return await self.r.hset(
                keys.layout_key(self.prefix),
                mapping={"version": keys.LAYOUT_VERSION, "partitions": self.layout.partitions},
            )

        await self.calls.retry("layout", run)
        self.layout_recorded = True

    def session_key(self, session_id: str, partition: int) -> str:
        """Return a session's hash."""
        return self.layout.session(partition, session_id)

    async def read(
        self,
        sessions: Sessions,
        hits: Sequence[tuple[str, int]] = (),
        *,
        latest: bool | Collection[str] = True,
    ) -> tuple[dict[str, SessionState], list[bool]]:
        """Read sessions' state, and which (session, hit_number) pairs are applied.

        ``sessions`` maps each session, those of ``hits`` too, to its partition. One call
        per group of partitions: HMGET of each session's hash. ``latest`` says whose latest
        score to read: all, none, or the sessions named; the others' states say
        ``has_latest=False`` (``latest_scores`` reads them).
        """
        return await (await self.send_read(sessions, hits, latest=latest))

    async def send_read(
        self,
        sessions: Sessions,
        hits: Sequence[tuple[str, int]] = (),
        *,
        latest: bool | Collection[str] = True,
    ) -> Awaitable[tuple[dict[str, SessionState], list[bool]]]:
        """``read``, returning once the calls are sent: await the result for what it read.

        Redis runs a lane's calls in the order sent, so the read sees the writes sent
        before it and none sent after it.
        """
        numbers: dict[str, list[int]] = {}
        for sid, n in hits:
            numbers.setdefault(sid, []).append(n)
        groups: dict[int, list[str]] = {}
        for sid, partition in sessions.items():
            groups.setdefault(self.calls.group(partition), []).append(sid)
        session = self.layout.session
        sent = []
        for sids in groups.values():
            fields, at = [], []
            for sid in sids:
                wanted = latest if isinstance(latest, bool) else sid in latest
                these = _READ_LATEST if wanted else READ_FIELDS
                at.append(_LATEST_AT if wanted else 0)
                if sid in numbers:
                    these = [*these, *(f"hit:{n}" for n in numbers[sid])]
                fields.append(these)
            names = [session(sessions[sid], sid) for sid in sids]
            args = [msgpack.packb(fields, use_bin_type=False), msgpack.packb(at)]
            sent.append((sids, await self.calls.send("read", self._read, names, args)))

        async def decoded() -> tuple[dict[str, SessionState], list[bool]]:
            out: dict[str, SessionState] = {}
            flags: dict[tuple[str, int], bool] = {}
            for sids, replied in sent:
                rows = msgpack.unpackb(await replied, raw=True)
                self._decode_read(sids, sessions, numbers, rows, latest, out, flags)
            return out, [flags[pair] for pair in hits]

        return decoded()

    @staticmethod
    def _decode_read(
        sids: list[str],
        sessions: Sessions,
        numbers: dict[str, list[int]],
        rows: list[Any],
        latest: bool | Collection[str],
        out: dict[str, SessionState],
        flags: dict[tuple[str, int], bool],
    ) -> None:
        empty = _EMPTY_STATE
        n_fields = len(READ_FIELDS)
        for sid, row in zip(sids, rows, strict=True):
            raw, ready, closed, outcome = (x or None for x in row[:_N_META])
            stored = None if raw is None else keys.unpack_row(raw)
            packed = row[_N_META]
            if packed and len(packed) == _STATE_BYTES:
                state = np.frombuffer(packed, dtype="<f8")  # read-only: states are replaced
            elif packed:
                state = np.array(keys.unpack_hit_state(packed, empty), dtype=np.float64)
            else:
                state = np.array(empty, dtype=np.float64)
            has_latest = latest if isinstance(latest, bool) else sid in latest
            at = n_fields + 2 if has_latest else n_fields
            out[sid] = SessionState(
                known=stored is not None,
                ready=ready is not None,
                client_id=None if stored is None else stored.client_id,
                start=None if stored is None else stored.start,
                vector=None if stored is None else np.frombuffer(stored.vector, dtype=np.float32),
                state=state,
                partition=sessions[sid],
                closed=closed is not None,
                latest=(
                    latest_from_hash(sid, row[n_fields] or None, row[n_fields + 1] or None, raw)
                    if has_latest
                    else None
                ),
                has_latest=has_latest,
                outcome=outcome,
            )
            for n, f in zip(numbers.get(sid, []), row[at:], strict=True):
                flags[(sid, n)] = f is not False  # its score is stored

    async def latest_scores(self, sessions: Sessions) -> list[bytes | None]:
        """Return the latest score JSON of each session (None where it has none)."""
        if not sessions:
            return []
        states, _ = await self.read(sessions, latest=True)
        return [states[sid].latest for sid in sessions]

    async def stored_scores(self, items: Sequence[tuple[str, int, str]]) -> list[bytes | None]:
        """Return the stored score JSON for (session, partition, score field) triples.

        The JSON is made again from the stored entry and the session's client id and
        start, the very bytes published the first time. One script call per group of
        partitions, on its lane, after the writes sent before it.
        """
        if not items:
            return []
        groups: dict[int, list[int]] = {}
        for k, (_, partition, _) in enumerate(items):
            groups.setdefault(self.calls.group(partition), []).append(k)
        found: list[Any] = [None] * len(items)
        sent = []
        for ks in groups.values():
            names = [self.layout.session(items[k][1], items[k][0]) for k in ks]
            packed = msgpack.packb([items[k][2] for k in ks], use_bin_type=False)
            sent.append((ks, await self.calls.send("stored scores", self._stored, names, [packed])))
        for ks, replied in sent:
            for k, row in zip(ks, msgpack.unpackb(await replied, raw=True), strict=True):
                found[k] = row
        out: list[bytes | None] = []
        for (sid, _, name), row in zip(items, found, strict=True):
            if not row:
                out.append(None)
                continue
            entry, raw = row
            stored = keys.unpack_row(raw) if raw else None
            client_id = None if stored is None else stored.client_id
            start = None if stored is None else stored.start
            out.append(score_from_history(sid, client_id, start, name, entry))
        return out

    async def park(self, hits: Sequence[ParkedHit]) -> list[bool | None]:
        """Park hits until their session rows arrive, one call per group of partitions.

        Returns, for each hit, whether it was parked: False when its session is ready
        by now (its row arrived while the batch ran) and the hit must be applied, None
        when its session has ``PARKED_HITS_MAX`` hits parked already (it is refused).
        """
        if not hits:
            return []
        groups: dict[int, list[int]] = {}
        for k, h in enumerate(hits):
            groups.setdefault(self.calls.group(h.partition), []).append(k)
        found: list[Any] = [None] * len(hits)
        for group, ks in groups.items():
            names = [
                key
                for k in ks
                for key in (
                    self.layout.session(hits[k].partition, hits[k].session_id),
                    self.layout.pending(hits[k].partition, hits[k].session_id),
                )
            ]
            fence = msgpack.packb(self.calls.fence(names, None, group), use_bin_type=False)
            args: list[bytes | int] = [
                self.ttl,
                limits.PARKED_HITS_MAX,
                len(ks),
                fence,
                *(hits[k].pack() for k in ks),
            ]
            replied = fenced("park", await (await self.calls.send("park", self._park, names, args)))
            for k, flag in zip(ks, replied, strict=True):
                found[k] = flag
        flags = {0: False, 1: True, 2: None}
        return [flags[int(flag)] for flag in found]

    async def release(self, sessions: Sessions) -> list[ParkedHit]:
        """Mark sessions ready for their hits; return the hits parked for them."""
        return (await self.release_sessions(sessions))[0]

    async def release_sessions(self, sessions: Sessions) -> tuple[list[ParkedHit], set[str]]:
        """Mark sessions ready for their hits; return the hits parked for them, and the
        sessions marked (those whose state Redis holds)."""
        if not sessions:
            return [], set()
        ready: set[str] = set()
        groups: dict[int, list[str]] = {}
        for sid, partition in sessions.items():
            groups.setdefault(self.calls.group(partition), []).append(sid)
        out: list[ParkedHit] = []
        for group, sids in groups.items():
            names = [
                key
                for sid in sids
                for key in (
                    self.layout.session(sessions[sid], sid),
                    self.layout.pending(sessions[sid], sid),
                )
            ]
            fence = msgpack.packb(self.calls.fence(names, None, group), use_bin_type=False)
            replied = await (
                await self.calls.send("release", self._release, names, [len(sids), fence])
            )
            for sid, items in zip(sids, fenced("release", replied), strict=True):
                if items is None:  # redis-py gives Lua's false as None
                    continue
                ready.add(sid)
                out += [ParkedHit.unpack(sid, item) for item in items]
        return out, ready

    async def forget_pending(self, sessions: Sessions) -> None:
        """Drop the parked hits of sessions once they are applied."""
        if not sessions:
            return

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for sid, partition in sessions.items():
                pipe.delete(self.layout.pending(partition, sid))
            return await pipe.execute()

        await self.calls.retry("forget pending", run)

    async def write(
        self,
        sessions: Sequence[SessionWrite],
        hits: Sequence[HitWrite],
        watermarks: dict[tuple[str, int], tuple[float, float]] | None = None,
        events: int | Mapping[int, int] = 0,
        offsets: Offsets | None = None,
    ) -> set[str]:
        """Write a batch's sessions, states, applied hits and scores atomically.

        Open sessions are kept in their partition's sorted set, scored by their latest
        event time (only ever raised), for the inactivity close; ``watermarks`` maps an
        input kind and partition to its (event time, wall time) high-water marks in ms.
        The dashboard's aggregates move in the same call; ``events`` is the batch's
        number of records by partition (or all in partition 0), for its events per
        minute. ``offsets`` raises the applied offsets of input partitions
        (``Layout.applied``): the state now reflects every record before them. Raises
        RedisLost, having written nothing, if Redis lost writes. Returns the sessions
        whose rows Redis held already (none of their row's writes happened).
        """
        return await (await self.send_write(sessions, hits, watermarks, events, offsets))

    async def send_write(
        self,
        sessions: Sequence[SessionWrite],
        hits: Sequence[HitWrite],
        watermarks: dict[tuple[str, int], tuple[float, float]] | None = None,
        events: int | Mapping[int, int] = 0,
        offsets: Offsets | None = None,
    ) -> Awaitable[set[str]]:
        """``write``, returning once the calls are sent: await the result for them to land."""
        if not sessions and not hits and not watermarks and not events and not offsets:
            return _nothing()
        if not self.layout_recorded:
            await self.record_layout()
        batch = WriteCall(self.calls)
        layout = self.layout
        opened: dict[int, list[Any]] = {}
        scores: dict[int, int] = {}
        for s in sessions:
            part = s.partition
            ops, d = batch.ops(part)
            values = s.channel or [NO_CHANNEL] * 5
            entry = s.history if s.history is not None else s.score_json
            row = keys.StoredRow(
                s.start,
                s.client_id,
                s.vector.astype(np.float32).tobytes(),
                s.event_ms,
                tuple(values),
            )
            probability = repr(float(s.probability))
            ops.add(
                "S",
                layout.session(part, s.session_id),
                d,
                s.session_id,
                probability,
                _num(s.event_ms),
                *values[:3],
                keys.pack_row(row),
                _PACKED_EMPTY,
                s.history_field,
                entry,
            )
            opened.setdefault(part, []).extend((repr(s.event_ms), s.session_id))
            scores[part] = scores.get(part, 0) + 1
        for h in hits:
            part = h.partition
            ops, d = batch.ops(part)
            if not h.scores:
                key = layout.session(part, h.session_id)
                ops.add("HSET", key, keys.HIT_STATE_FIELD, keys.pack_hit_state(h.state.tolist()))
                ops.add("EXPIRE", key, self._ttl)
                continue
            entries = h.entries or [json for _, json in h.scores]
            names = [name for name, _ in h.scores]
            fields = [x for pair in zip(names[1:], entries[1:], strict=True) for x in pair]
            if h.outcome is not None:
                fields += ["outcome", h.outcome]
            hot = not h.closed and not h.converted and h.outcome is None
            ops.add(
                "H",
                layout.session(part, h.session_id),
                d,
                h.session_id,
                repr(float(h.probability)),
                int(h.outcome is not None),
                int(hot),
                names[0],
                entries[0],
                keys.pack_hit_state(h.state.tolist()),
                names[-1],
                int(h.refresh_ttl),
                *fields,
            )
            scores[part] = scores.get(part, 0) + len(h.scores)
            if not h.closed:
                opened.setdefault(part, []).extend((repr(h.event_ms), h.session_id))
        for part, members in opened.items():
            ops, _ = batch.ops(part)
            ops.add("ZADD", layout.open_sessions(part), "GT", *members)
        for (kind, part), (event_ms, wall_ms) in (watermarks or {}).items():
            ops, _ = batch.ops(part)
            ops.add(
                "HSET",
                layout.watermark(part),
                f"{kind}_event_ms",
                repr(event_ms),
                f"{kind}_wall_ms",
                repr(wall_ms),
            )
        counts = {0: events} if isinstance(events, int) else dict(events)
        now = minute()
        for part in set(counts) | set(scores):
            n_events, n_scores = counts.get(part, 0), scores.get(part, 0)
            if n_events or n_scores:
                ops, d = batch.ops(part)
                ops.add("R", None, d, now, n_events, n_scores)
        for (kind, part), offset in (offsets or {}).items():
            ops, _ = batch.ops(part)
            ops.add("AMAX", layout.applied(part), kind, str(offset))
        return await batch.send("write", offsets)

    async def applied(self, partitions: Collection[int]) -> dict[tuple[str, int], int | None]:
        """Return the applied offsets Redis holds for input partitions (None: none)."""
        order = sorted(partitions)

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for partition in order:
                pipe.hmget(self.layout.applied(partition), ["sessions", "hits"])
            return await pipe.execute()

        found = await self.calls.retry("applied offsets", run) if order else []
        out: dict[tuple[str, int], int | None] = {}
        for partition, (sessions, hits) in zip(order, found, strict=True):
            out[("sessions", partition)] = None if sessions is None else int(sessions)
            out[("hits", partition)] = None if hits is None else int(hits)
        return out

    async def watermarks(
        self, partitions: Sequence[int]
    ) -> dict[int, dict[str, tuple[float, float]]]:
        """Return partitions' stored (event time, wall time) marks in ms, by input kind."""

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for partition in partitions:
                pipe.hgetall(self.layout.watermark(partition))
            return await pipe.execute()

        found = await self.calls.retry("watermarks", run) if partitions else []
        out: dict[int, dict[str, tuple[float, float]]] = {}
        for partition, h in zip(partitions, found, strict=True):
            marks = out[partition] = {}
            for kind in ("sessions", "hits"):
                event = h.get(f"{kind}_event_ms".encode())
                wall = h.get(f"{kind}_wall_ms".encode())
                if event is not None and wall is not None:
                    marks[kind] = (float(event), float(wall))
        return out

    async def due(
        self, upto_ms: Mapping[int, float], limit: int
    ) -> dict[int, list[tuple[str, float]]]:
        """Return, by partition, open sessions whose latest event is at or before its time.

        At most ``limit`` sessions in all, the partitions taken in the order given.
        """
        order = list(upto_ms)

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for partition in order:
                pipe.zrangebyscore(
                    self.layout.open_sessions(partition),
                    "-inf",
                    upto_ms[partition],
                    start=0,
                    num=limit,
                    withscores=True,
                )
            return await pipe.execute()

        found = await self.calls.retry("due", run) if order else []
        out: dict[int, list[tuple[str, float]]] = {}
        left = limit
        for partition, rows in zip(order, found, strict=True):
            if rows and left > 0:
                out[partition] = [(sid.decode(), float(ms)) for sid, ms in rows[:left]]
                left -= len(out[partition])
        return out

    async def open_count(self, partitions: Sequence[int]) -> int:
        """Count the open sessions of these partitions."""

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for partition in partitions:
                pipe.zcard(self.layout.open_sessions(partition))
            return await pipe.execute()

        return sum(int(n) for n in await self.calls.retry("open count", run)) if partitions else 0

    async def prepare_close(self, closes: Sequence[CloseWrite]) -> None:
        """Store the final scores and outcomes of sessions about to be closed.

        The sessions are marked closed here, with their final scores, so a hit applied
        from now on is late; they leave their partitions' open sets in ``finish_close``,
        once the scores are published. A crash in between finds them still open, with a
        final score stored, and publishes the very same copies again.
        """
        if not closes:
            return
        batch = WriteCall(self.calls)
        scores: dict[int, int] = {}
        for c in closes:
            ops, d = batch.ops(c.partition)
            entry = c.history if c.history is not None else c.score_json
            fields: list[Any] = [c.history_field, entry, keys.LATEST_FIELD, c.history_field]
            if c.outcome is not None:
                fields += ["outcome", c.outcome]
            ops.add("C", self.layout.session(c.partition, c.session_id), d, c.session_id, *fields)
            scores[c.partition] = scores.get(c.partition, 0) + 1
        now = minute()
        for part, n in scores.items():
            ops, d = batch.ops(part)
            ops.add("R", None, d, now, 0, n)
        await (await batch.send("prepare close"))

    async def finish_close(self, closed: Mapping[int, Sequence[str]]) -> None:
        """Take closed sessions out of their partitions' open sets.

        (The dashboard counted them closed in ``prepare_close``, with their final score.)
        """
        batch = WriteCall(self.calls)
        for partition, sids in closed.items():
            if sids:
                ops, _ = batch.ops(partition)
                ops.add("ZREM", self.layout.open_sessions(partition), *sids)
        await (await batch.send("finish close"))


NO_CHANNEL = "(none)"


async def _nothing() -> set[str]:
    return set()


def _num(x: float) -> str:
    """A number as text: a whole one without its fraction (cheaper than ``repr``)."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()
