"""The Redis session store: per-session state, applied hits, parked hits and scores.

Layout (keys from ``contracts.keys``, all with the session TTL):
- state hash: ``client_id``, ``start`` (ISO start time), ``vec`` (session features as
  float32 bytes) and ``hs``, the hit-state counters as float64 bytes (states written
  before it kept one field per counter, ``s:<name>``, still read where it is absent);
- pending list: hits that arrived before their session row (``ParkedHit``, packed);
- score key: the latest ScoreEvent JSON; history hash: every score by trigger:hit, in
  compact form (``contracts.history.history_entry``; the JSON is made again from it).
  A hit is applied exactly when its score is in the history (one atomic write stores
  both), so the history also tells which hits a redelivery must not apply again.

Each batch reads with one pipeline and writes with one Lua call (atomic in Redis), so
a crash leaves either all of a batch's writes or none of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import numpy as np
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contracts import keys, limits
from contracts.dashboard import RATE_TTL_S, minute_key
from contracts.history import history_field, score_from_history
from features.hits import STATE_NAMES, empty_state
from stream import dashboard
from stream.dashboard import DashScore, DashStart
from stream.lane import ScriptLane

log = logging.getLogger(__name__)
T = TypeVar("T")

# The counters' fields as states were written before the packed ``hs`` field.
LEGACY_STATE_FIELDS = [keys.state_field(name) for name in STATE_NAMES]
HITS = STATE_NAMES.index("hits")

# The fence, run first by every script that writes: ``lost(packed)`` is true when Redis
# holds less of an applied-offsets field than this worker knows it wrote (it lost
# writes); the script then writes nothing and returns 'LOST'. ``packed`` is MessagePack
# of [index in KEYS, field, offset] triples (``RedisStore._fence``).
FENCE_LUA = """
local function lost(packed)
  local fence = cmsgpack.unpack(packed)
  for f = 1, #fence do
    local cur = redis.call('HGET', KEYS[fence[f][1]], fence[f][2])
    if not cur or tonumber(cur) < tonumber(fence[f][3]) then return true end
  end
  return false
end
"""

# Park hits only while their session is not released yet, atomically with that check.
# KEYS: state and pending key of each hit's session, in pairs, then the fence's keys;
# ARGV: the TTL, the most hits one session may have parked, the number of pairs, the
# fence, then one packed hit per pair. Returns 1 for each hit parked, 0 where its
# session is ready, 2 where its session has the most parked.
PARK_SCRIPT = (
    FENCE_LUA
    + """
if lost(ARGV[4]) then return 'LOST' end
local out = {}
local most = tonumber(ARGV[2])
for i = 1, 2 * tonumber(ARGV[3]), 2 do
  if redis.call('HEXISTS', KEYS[i], 'ready') == 1 then
    out[#out + 1] = 0
  elseif redis.call('LLEN', KEYS[i + 1]) >= most then
    out[#out + 1] = 2
  else
    redis.call('RPUSH', KEYS[i + 1], ARGV[(i + 1) / 2 + 4])
    redis.call('EXPIRE', KEYS[i + 1], ARGV[1])
    out[#out + 1] = 1
  end
end
return out
"""
)

# Release sessions to their hits (their session-start scores are on Kafka) and hand
# over the hits parked so far; no hit parks after this. KEYS: state and pending key of
# each session, in pairs, then the fence's keys; ARGV: the TTL, the number of pairs, the
# fence. A session whose state is not in Redis (it expired, or Redis lost it) is not
# marked ready: a hit must never find a ready session without its row's fields.
RELEASE_SCRIPT = (
    FENCE_LUA
    + """
if lost(ARGV[3]) then return 'LOST' end
local out = {}
for i = 1, 2 * tonumber(ARGV[2]), 2 do
  if redis.call('HEXISTS', KEYS[i], 'start') == 1 then
    redis.call('HSET', KEYS[i], 'ready', '1')
    redis.call('EXPIRE', KEYS[i], ARGV[1])
    out[#out + 1] = redis.call('LRANGE', KEYS[i + 1], 0, -1)
  else
    out[#out + 1] = {}
  end
end
return out
"""
)

# A batch's writes, atomically, in one call. ARGV[1] is a MessagePack array: a run of
# commands, each as its name, the index of its key in KEYS, its argument count and its
# arguments (one packed argument instead of thousands keeps the client's work small).
# DSTART and DSCORE are the dashboard's own commands (stream/dashboard.py); AMAX field
# offset raises an applied-offsets field (keys.applied_key) to the offset, never lowers
# it. ARGV[3], the fence, is MessagePack of [index in KEYS, field, offset] triples: the
# offsets this worker knows Redis holds. If Redis holds less (it lost writes), nothing
# is written and the call returns 'LOST'.
APPLY_SCRIPT = (
    dashboard.LUA
    + FENCE_LUA
    + """
if lost(ARGV[3]) then return 'LOST' end
local ops = cmsgpack.unpack(ARGV[1])
local i, n = 1, #ops
while i <= n do
  local c = ops[i + 2]
  if ops[i] == 'DSTART' then
    dstart(KEYS[ops[i + 1]], ops, i + 3)
  elseif ops[i] == 'DSCORE' then
    dscore(KEYS[ops[i + 1]], ops, i + 3)
  elseif ops[i] == 'AMAX' then
    local key, field, offset = KEYS[ops[i + 1]], ops[i + 3], ops[i + 4]
    local cur = redis.call('HGET', key, field)
    if not cur or tonumber(cur) < tonumber(offset) then redis.call('HSET', key, field, offset) end
  else
    redis.call(ops[i], KEYS[ops[i + 1]], unpack(ops, i + 3, i + 2 + c))
  end
  i = i + 3 + c
end
flush()
return 1
"""
)

# A batch's reads in one call. KEYS: state, latest-score and history key of each
# session; ARGV[1]: MessagePack of [fields to read, history fields of the hits to look
# up per session, whether to read its latest score per session, the counters' fields of
# the layout before the packed one]. Returns MessagePack of [fields, latest, the hits'
# history entries, counters of the earlier layout] per session; false is missing (or
# the latest score not asked for). A hit is applied exactly when its score is in the
# history: both are written in one atomic call. The last field read is the packed
# counters: a state stored without it (it has a start) was written before them, and
# only then are the older fields read.
READ_SCRIPT = """
local args = cmsgpack.unpack(ARGV[1])
local fields, numbers, with_latest, legacy = args[1], args[2], args[3], args[4]
local out = {}
for s = 1, #numbers do
  local k = (s - 1) * 3
  local row = redis.call('HMGET', KEYS[k + 1], unpack(fields))
  local latest = false
  if with_latest[s] then latest = redis.call('GET', KEYS[k + 2]) end
  local item = {row, latest, {}, false}
  if #numbers[s] > 0 then
    item[3] = redis.call('HMGET', KEYS[k + 3], unpack(numbers[s]))
  end
  if row[1] and not row[#fields] then
    item[4] = redis.call('HMGET', KEYS[k + 1], unpack(legacy))
  end
  out[s] = item
end
return cmsgpack.pack(out)
"""

# Stored scores, for copies published again. KEYS: history and state key of each score,
# in pairs; ARGV[1]: MessagePack of the history field of each. Returns MessagePack of
# [entry, client_id, start] per score, or false where none is stored (most due sessions
# of a close round): the state's fields are read only where the entry exists.
STORED_SCRIPT = """
local names = cmsgpack.unpack(ARGV[1])
local out = {}
for i = 1, #names do
  local entry = redis.call('HGET', KEYS[2 * i - 1], names[i])
  if entry then
    local meta = redis.call('HMGET', KEYS[2 * i], 'client_id', 'start')
    out[i] = {entry, meta[1], meta[2]}
  else
    out[i] = false
  end
end
return cmsgpack.pack(out)
"""

# The hash fields a batch reads of each session; the packed counters come last.
READ_FIELDS = ["start", "ready", "client_id", "vec", "p", "closed", "outcome", keys.HIT_STATE_FIELD]
_N_META = 7
_EMPTY_STATE: list[float] = empty_state().tolist()  # what a counter is before any hit
_PACKED_EMPTY = keys.pack_hit_state(_EMPTY_STATE)
_STATE_BYTES = len(_PACKED_EMPTY)
_RATE_TTL = str(RATE_TTL_S)


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


class _Ops:
    """Commands collected for APPLY_SCRIPT."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.argv: list[Any] = []

    def add(self, command: str, key: str, *args: Any) -> None:
        k = self.index.get(key)
        if k is None:
            self.keys.append(key)
            k = self.index[key] = len(self.keys)
        self.argv.extend((command, k, len(args)))
        self.argv.extend(args)


class RedisLost(RuntimeError):
    """Redis holds less than this worker wrote to it: it lost writes (a restart without
    persistence, AOF's last second, a failover, a flush). Nothing was written on top."""


# Input offsets by (input kind, partition): "sessions" or "hits".
Offsets = Mapping[tuple[str, int], int]


class InfrastructureError(RuntimeError):
    """Redis stayed unreachable through every retry."""


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
    probability: float = 0.0  # the latest of the batch's scores
    entries: list[bytes] = field(default_factory=list)  # history entries of ``scores``, if any


@dataclass
class CloseWrite:
    """A session closed for inactivity: its final score and, unless converted, outcome."""

    session_id: str
    score_json: bytes
    history_field: str
    outcome: bytes | None
    probability: float = 0.0
    hits: int = 0  # hits applied before the close
    history: bytes | None = None  # the final score's history entry (None: keep the JSON)


class RedisStore:
    """Reads and writes session state in Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        ttl_s: int,
        retries: int,
        dashboard_retention_s: int = 30 * 86400,
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl = ttl_s
        # Numbers the scripts hand straight to Redis go as text: a Lua number given to
        # redis.call is formatted with snprintf first, a tenth of Redis's time in a probe.
        self._ttl = str(ttl_s)
        self.retries = retries
        self._dash_cfg = msgpack.packb(
            dashboard.config(prefix, ttl_s, dashboard_retention_s), use_bin_type=False
        )
        self._park = client.register_script(PARK_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._apply = client.register_script(APPLY_SCRIPT)
        self._read = client.register_script(READ_SCRIPT)
        self._stored = client.register_script(STORED_SCRIPT)
        self.lane = ScriptLane(client)
        # The fence: the applied offsets this worker knows Redis holds, by (input kind,
        # partition). Every write checks them first (APPLY_SCRIPT) and raises RedisLost
        # where Redis holds less.
        self.expected: dict[tuple[str, int], int] = {}

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        for attempt in range(1, self.retries + 1):
            try:
                return await call()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if attempt == self.retries:
                    raise InfrastructureError(
                        f"redis {what} failed {attempt} times: {exc}"
                    ) from exc
                log.warning("redis %s failed (%s); retry %d in %.1f s", what, exc, attempt, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def _k(self, fn: Callable[[str, str], str], sid: str) -> str:
        return fn(sid, self.prefix)

    async def read(
        self,
        session_ids: Sequence[str],
        hits: Sequence[tuple[str, int]] = (),
        *,
        latest: bool | Collection[str] = True,
    ) -> tuple[dict[str, SessionState], list[bool]]:
        """Read sessions' state, and which (session, hit_number) pairs are applied.

        One call: HMGET of its state and history, and GET, of each session. ``latest``
        says whose latest score to read: all, none, or the sessions named; the others'
        states say ``has_latest=False`` (``latest_scores`` reads them).
        """
        return await (await self.send_read(session_ids, hits, latest=latest))

    async def send_read(
        self,
        session_ids: Sequence[str],
        hits: Sequence[tuple[str, int]] = (),
        *,
        latest: bool | Collection[str] = True,
    ) -> Awaitable[tuple[dict[str, SessionState], list[bool]]]:
        """``read``, returning once the call is sent: await the result for what it read.

        Redis runs the lane's calls in the order sent, so the read sees the writes sent
        before it and none sent after it.
        """
        sids = list(dict.fromkeys([*session_ids, *(sid for sid, _ in hits)]))
        numbers: dict[str, list[int]] = {}
        for sid, n in hits:
            numbers.setdefault(sid, []).append(n)
        names = [
            key
            for sid in sids
            for key in (
                self._k(keys.session_key, sid),
                self._k(keys.latest_score_key, sid),
                self._k(keys.score_history_key, sid),
            )
        ]
        wanted = [latest if isinstance(latest, bool) else sid in latest for sid in sids]
        packed = msgpack.packb(
            [
                READ_FIELDS,
                [[history_field("hit", n) for n in numbers.get(sid, ())] for sid in sids],
                wanted,
                LEGACY_STATE_FIELDS,
            ],
            use_bin_type=False,
        )
        replied = await self._send("read", self._read, names, [packed])

        async def decoded() -> tuple[dict[str, SessionState], list[bool]]:
            results = msgpack.unpackb(await replied, raw=True)
            return self._decode_read(sids, numbers, hits, results, wanted)

        return decoded()

    @staticmethod
    def _decode_read(
        sids: list[str],
        numbers: dict[str, list[int]],
        hits: Sequence[tuple[str, int]],
        results: list[Any],
        wanted: list[bool],
    ) -> tuple[dict[str, SessionState], list[bool]]:
        out = {}
        flags: dict[tuple[str, int], bool] = {}
        empty = _EMPTY_STATE
        for sid, (h, latest, found, legacy), has_latest in zip(sids, results, wanted, strict=True):
            start, ready, client_id, vec, part, closed, outcome = (x or None for x in h[:_N_META])
            packed = h[_N_META]
            if packed and len(packed) == _STATE_BYTES:
                state = np.frombuffer(packed, dtype="<f8")  # read-only: states are replaced
            elif packed:
                state = np.array(keys.unpack_hit_state(packed, empty), dtype=np.float64)
            elif legacy:
                state = np.array(keys.legacy_hit_state(legacy, empty), dtype=np.float64)
            else:
                state = np.array(empty, dtype=np.float64)
            out[sid] = SessionState(
                known=start is not None,
                ready=ready is not None,
                client_id=_text(client_id),
                start=_text(start),
                vector=None if vec is None else np.frombuffer(vec, dtype=np.float32),
                state=state,
                partition=None if part is None else int(part),
                closed=closed is not None,
                latest=latest or None,
                has_latest=has_latest,
                outcome=outcome,
            )
            for n, f in zip(numbers.get(sid, []), found, strict=True):
                flags[(sid, n)] = f is not False  # its score is in the history
        return out, [flags[pair] for pair in hits]

    async def latest_scores(self, session_ids: Sequence[str]) -> list[bytes | None]:
        """Return the latest score JSON of each session (None where it has none)."""
        if not session_ids:
            return []

        async def run() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for sid in session_ids:
                pipe.get(self._k(keys.latest_score_key, sid))
            return await pipe.execute()

        return await self._retry("latest scores", run)

    async def stored_scores(self, items: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """Return the stored score JSON for (session, history field) pairs.

        The JSON is made again from the history entry and the session's client id and
        start, the very bytes published the first time. One script call on the lane,
        after the writes sent before it.
        """
        if not items:
            return []
        names = [
            key
            for sid, _ in items
            for key in (
                self._k(keys.score_history_key, sid),
                self._k(keys.session_key, sid),
            )
        ]
        packed = msgpack.packb([name for _, name in items], use_bin_type=False)
        found = msgpack.unpackb(
            await (await self._send("stored scores", self._stored, names, [packed])), raw=True
        )
        out: list[bytes | None] = []
        for (sid, name), row in zip(items, found, strict=True):
            if not row:
                out.append(None)
                continue
            entry, client_id, start = row
            out.append(
                score_from_history(sid, _text(client_id or None), _text(start or None), name, entry)
            )
        return out

    async def park(self, hits: Sequence[ParkedHit]) -> list[bool | None]:
        """Park hits until their session rows arrive, in one call.

        Returns, for each hit, whether it was parked: False when its session is ready
        by now (its row arrived while the batch ran) and the hit must be applied, None
        when its session has ``PARKED_HITS_MAX`` hits parked already (it is refused).
        """
        if not hits:
            return []
        names = [
            key
            for h in hits
            for key in (
                self._k(keys.session_key, h.session_id),
                self._k(keys.pending_hits_key, h.session_id),
            )
        ]
        fence = self._fence(names)
        args: list[bytes | int] = [
            self.ttl,
            limits.PARKED_HITS_MAX,
            len(hits),
            fence,
            *(h.pack() for h in hits),
        ]

        async def run() -> Any:
            return await self._park(keys=names, args=args)

        found = _fenced("park", await self._retry("park", run))
        flags = {0: False, 1: True, 2: None}
        return [flags[int(flag)] for flag in found]

    async def release(self, sids: Sequence[str]) -> list[ParkedHit]:
        """Mark sessions ready for their hits; return the hits parked for them."""
        if not sids:
            return []
        names = [
            key
            for sid in sids
            for key in (self._k(keys.session_key, sid), self._k(keys.pending_hits_key, sid))
        ]

        fence = self._fence(names)

        async def run() -> Any:
            return await self._release(keys=names, args=[self.ttl, len(sids), fence])

        results = _fenced("release", await self._retry("release", run))
        return [
            ParkedHit.unpack(sid, item)
            for sid, items in zip(sids, results, strict=True)
            for item in items
        ]

    async def forget_pending(self, sids: Sequence[str]) -> None:
        """Drop the parked hits of sessions once they are applied."""
        if not sids:
            return

        async def run() -> Any:
            return await self.r.delete(*[self._k(keys.pending_hits_key, sid) for sid in sids])

        await self._retry("forget pending", run)

    async def write(
        self,
        sessions: Sequence[SessionWrite],
        hits: Sequence[HitWrite],
        watermarks: dict[tuple[str, int], tuple[float, float]] | None = None,
        events: int = 0,
        offsets: Offsets | None = None,
    ) -> None:
        """Write a batch's sessions, states, applied hits and scores atomically.

        Open sessions are kept in their partition's sorted set, scored by their latest
        event time (only ever raised), for the inactivity close; ``watermarks`` maps an
        input kind and partition to its (event time, wall time) high-water marks in ms.
        The dashboard's aggregates move in the same call; ``events`` is the batch's
        size, for its events per minute. ``offsets`` raises the applied offsets of input
        partitions (``keys.applied_key``): the state now reflects every record before
        them. Raises RedisLost, having written nothing, if Redis lost writes.
        """
        await (await self.send_write(sessions, hits, watermarks, events, offsets))

    async def send_write(
        self,
        sessions: Sequence[SessionWrite],
        hits: Sequence[HitWrite],
        watermarks: dict[tuple[str, int], tuple[float, float]] | None = None,
        events: int = 0,
        offsets: Offsets | None = None,
    ) -> Awaitable[None]:
        """``write``, returning once the call is sent: await the result for it to land."""
        if not sessions and not hits and not watermarks and not events and not offsets:
            return asyncio.sleep(0)

        ops = _Ops()
        scores = 0
        ttl = self._ttl
        for s in sessions:
            state_key = self._k(keys.session_key, s.session_id)
            fields: list[Any] = [
                "start",
                s.start,
                "vec",
                s.vector.astype(np.float32).tobytes(),
                "p",
                str(s.partition),
                keys.HIT_STATE_FIELD,
                _PACKED_EMPTY,
            ]
            if s.client_id is not None:
                fields += ["client_id", s.client_id]
            ops.add("HSET", state_key, *fields)
            ops.add("EXPIRE", state_key, ttl)
            self._score(ops, s.session_id, [(s.history_field, s.score_json)], _one(s.history))
            ops.add(
                "ZADD",
                keys.open_sessions_key(s.partition, self.prefix),
                "GT",
                repr(s.event_ms),
                s.session_id,
            )
            if s.channel is not None:
                start = DashStart(s.session_id, s.probability, s.event_ms, s.channel)
                self._dash(ops, "DSTART", s.session_id, dashboard.start_args(start))
            scores += 1
        for h in hits:
            state_key = self._k(keys.session_key, h.session_id)
            mapping: list[Any] = [keys.HIT_STATE_FIELD, keys.pack_hit_state(h.state.tolist())]
            if h.outcome is not None:
                mapping += ["outcome", h.outcome]
            ops.add("HSET", state_key, *mapping)
            ops.add("EXPIRE", state_key, ttl)
            self._score(ops, h.session_id, h.scores, h.entries)
            scores += len(h.scores)
            if h.scores:
                seen = int(h.state[HITS])
                update = DashScore(
                    h.session_id,
                    seq=float(seen),
                    probability=h.probability,
                    converted=h.outcome is not None,
                    hits=seen,
                )
                self._dash(ops, "DSCORE", h.session_id, dashboard.score_args(update))
            if not h.closed:
                ops.add(
                    "ZADD",
                    keys.open_sessions_key(h.partition, self.prefix),
                    "GT",
                    repr(h.event_ms),
                    h.session_id,
                )
        for (kind, partition), (event_ms, wall_ms) in (watermarks or {}).items():
            ops.add(
                "HSET",
                keys.watermark_key(partition, self.prefix),
                f"{kind}_event_ms",
                repr(event_ms),
                f"{kind}_wall_ms",
                repr(wall_ms),
            )
        if events or scores:
            rate = minute_key(self.prefix)
            ops.add("HINCRBY", rate, "events", str(events))
            ops.add("HINCRBY", rate, "scores", str(scores))
            ops.add("EXPIRE", rate, _RATE_TTL)
        for (kind, partition), offset in (offsets or {}).items():
            ops.add("AMAX", keys.applied_key(partition, self.prefix), kind, str(offset))
        return await self._send_ops("write", ops, offsets)

    async def _run_ops(self, what: str, ops: _Ops) -> None:
        await (await self._send_ops(what, ops))

    async def _send_ops(
        self, what: str, ops: _Ops, offsets: Offsets | None = None
    ) -> Awaitable[None]:
        """Send a batch's writes now; return what to await for them to have landed.

        The call carries the fence (``expected``); once it has landed, the offsets it
        raised are what this worker knows Redis holds.
        """
        args = [
            msgpack.packb(ops.argv, use_bin_type=False),
            self._dash_cfg,
            self._fence(ops.keys, ops.index),
        ]
        replied = await self._send(what, self._apply, ops.keys, args)

        async def landed() -> None:
            _fenced(what, await replied)
            for key, offset in (offsets or {}).items():
                if offset > self.expected.get(key, -1):
                    self.expected[key] = offset

        return landed()

    def _fence(self, names: list[str], index: dict[str, int] | None = None) -> bytes:
        """Return the fence argument of a script call, adding its keys to ``names``.

        ``index`` maps the keys already in ``names`` to their place (1-based), if known.
        """
        fence = []
        for (kind, partition), offset in self.expected.items():
            key = keys.applied_key(partition, self.prefix)
            k = None if index is None else index.get(key)
            if k is None:
                names.append(key)
                k = len(names)
                if index is not None:
                    index[key] = k
            fence.append([k, kind, str(offset)])
        return msgpack.packb(fence, use_bin_type=False)

    async def applied(self, partitions: Collection[int]) -> dict[tuple[str, int], int | None]:
        """Return the applied offsets Redis holds for input partitions (None: none)."""
        order = sorted(partitions)

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for partition in order:
                pipe.hmget(keys.applied_key(partition, self.prefix), ["sessions", "hits"])
            return await pipe.execute()

        found = await self._retry("applied offsets", run) if order else []
        out: dict[tuple[str, int], int | None] = {}
        for partition, (sessions, hits) in zip(order, found, strict=True):
            out[("sessions", partition)] = None if sessions is None else int(sessions)
            out[("hits", partition)] = None if hits is None else int(hits)
        return out

    async def _send(
        self, what: str, script: AsyncScript, names: list[str], args: list[Any]
    ) -> Awaitable[Any]:
        """Send a script call on the lane now; return what to await for its reply.

        If the connection fails before the reply, the call is made again (with the
        retries of ``_retry``): the store's scripts are idempotent.
        """

        async def run() -> Any:
            return await self.lane.call(script, names, args)

        try:
            sent: asyncio.Future[Any] | None = await self.lane.send(script, names, args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("redis %s failed (%s); retrying", what, exc)
            sent = None

        async def replied() -> Any:
            if sent is not None:
                try:
                    return await self.lane.reply(script, sent, names, args)
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    log.warning("redis %s failed (%s); retrying", what, exc)
            return await self._retry(what, run)

        return replied()

    def _dash(self, ops: _Ops, command: str, sid: str, args: list[Any]) -> None:
        ops.add(command, keys.dashboard_session_key(sid, self.prefix), *args)

    async def watermarks(
        self, partitions: Sequence[int]
    ) -> dict[int, dict[str, tuple[float, float]]]:
        """Return partitions' stored (event time, wall time) marks in ms, by input kind."""

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for partition in partitions:
                pipe.hgetall(keys.watermark_key(partition, self.prefix))
            return await pipe.execute()

        found = await self._retry("watermarks", run) if partitions else []
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
                    keys.open_sessions_key(partition, self.prefix),
                    "-inf",
                    upto_ms[partition],
                    start=0,
                    num=limit,
                    withscores=True,
                )
            return await pipe.execute()

        found = await self._retry("due", run) if order else []
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
                pipe.zcard(keys.open_sessions_key(partition, self.prefix))
            return await pipe.execute()

        return sum(int(n) for n in await self._retry("open count", run)) if partitions else 0

    async def prepare_close(self, closes: Sequence[CloseWrite]) -> None:
        """Store the final scores and outcomes of sessions about to be closed.

        The sessions are marked closed here, with their final scores, so a hit applied
        from now on is late; they leave their partitions' open sets in ``finish_close``,
        once the scores are published. A crash in between finds them still open, with a
        final score stored, and publishes the very same copies again.
        """
        if not closes:
            return
        ops = _Ops()
        for c in closes:
            state_key = self._k(keys.session_key, c.session_id)
            ops.add("HSET", state_key, "closed", "1")
            self._score(ops, c.session_id, [(c.history_field, c.score_json)], _one(c.history))
            if c.outcome is not None:
                ops.add("HSET", state_key, "outcome", c.outcome)
            # A state that expired since the sweep read it comes back as these fields
            # alone: give it the TTL too (NX leaves a live state's TTL as it is).
            ops.add("EXPIRE", state_key, self._ttl, "NX")
            # Its final score and its close, in one dashboard update.
            final = DashScore(
                c.session_id, seq=c.hits + 0.5, probability=c.probability, hits=c.hits, closed=True
            )
            self._dash(ops, "DSCORE", c.session_id, dashboard.score_args(final))
        rate = minute_key(self.prefix)
        ops.add("HINCRBY", rate, "scores", str(len(closes)))
        ops.add("EXPIRE", rate, _RATE_TTL)
        await self._run_ops("prepare close", ops)

    async def finish_close(self, closed: Mapping[int, Sequence[str]]) -> None:
        """Take closed sessions out of their partitions' open sets.

        (The dashboard counted them closed in ``prepare_close``, with their final score.)
        """
        ops = _Ops()
        for partition, sids in closed.items():
            if sids:
                ops.add("ZREM", keys.open_sessions_key(partition, self.prefix), *sids)
        if ops.keys:
            await self._run_ops("finish close", ops)

    def _score(
        self, ops: _Ops, sid: str, scores: list[tuple[str, bytes]], entries: Sequence[bytes]
    ) -> None:
        """Keep scores: their history entries (their JSON where none) and the latest JSON."""
        if not scores:
            return
        history = self._k(keys.score_history_key, sid)
        latest = self._k(keys.latest_score_key, sid)
        flat: list[Any]
        if entries:
            flat = [
                x for (name, _), entry in zip(scores, entries, strict=True) for x in (name, entry)
            ]
        else:
            flat = [x for pair in scores for x in pair]
        ops.add("HSET", history, *flat)
        ops.add("EXPIRE", history, self._ttl)
        ops.add("SET", latest, scores[-1][1], "EX", self._ttl)


def _fenced(what: str, reply: T) -> T:
    """Return a script's reply, or raise RedisLost where its fence found Redis behind."""
    if reply == b"LOST":
        raise RedisLost(f"redis holds less than this worker wrote ({what} refused)")
    return reply


def _one(entry: bytes | None) -> list[bytes]:
    return [] if entry is None else [entry]


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()
