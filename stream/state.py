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
of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import numpy as np
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contracts import keys, limits
from contracts.dashboard import minute
from contracts.history import latest_from_hash, score_from_history
from features.hits import empty_state
from stream import dashboard
from stream.lane import ScriptLane
from stream.nodes import NodeLanes, is_moving

log = logging.getLogger(__name__)
T = TypeVar("T")


# The fence, run first by every script that writes: ``lost(fence, keys)`` is true when
# Redis holds less of an applied-offsets field than this worker knows it wrote (it lost
# writes); the script then writes nothing and returns 'LOST'. ``fence`` is a list of
# [index in keys, field, offset] triples (``RedisStore._fence``).
FENCE_LUA = """
local function lost(fence, keys)
  for f = 1, #fence do
    local cur = redis.call('HGET', keys[fence[f][1]], fence[f][2])
    if not cur or tonumber(cur) < tonumber(fence[f][3]) then return true end
  end
  return false
end
"""

# Park hits only while their session is not released yet, atomically with that check.
# KEYS: session and pending key of each hit's session, in pairs, then the fence's keys;
# ARGV: the TTL, the most hits one session may have parked, the number of pairs, the
# fence, then one packed hit per pair. Returns 1 for each hit parked, 0 where its
# session is ready, 2 where its session has the most parked.
PARK_SCRIPT = (
    FENCE_LUA
    + """
if lost(cmsgpack.unpack(ARGV[4]), KEYS) then return 'LOST' end
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
# over the hits parked so far; no hit parks after this. KEYS: session and pending key
# of each session, in pairs, then the fence's keys; ARGV: the number of pairs, the
# fence. Returns, per session, its parked hits, or false if its state is not in Redis
# (it expired, or Redis lost it): such a session is not marked ready, since a hit must
# never find a ready session without its row.
RELEASE_SCRIPT = (
    FENCE_LUA
    + """
if lost(cmsgpack.unpack(ARGV[2]), KEYS) then return 'LOST' end
local out = {}
for i = 1, 2 * tonumber(ARGV[1]), 2 do
  if redis.call('HEXISTS', KEYS[i], 'row') == 1 then
    redis.call('HSET', KEYS[i], 'ready', '1')
    out[#out + 1] = redis.call('LRANGE', KEYS[i + 1], 0, -1)
  else
    out[#out + 1] = false
  end
end
return out
"""
)

# A batch's writes, atomically, in one call: ARGV[1] is the dashboard's settings
# (stream/dashboard.py), ARGV[2] the dashboard share the call's sums go to, each further
# argument one part: MessagePack of [commands, fence, dashboard prefixes, keys, probe]. A
# single Redis gets one part, whose keys are the call's KEYS (false in the part); Redis
# Cluster gets a part per input partition of the master, each with its keys (one slot
# each), and the script flag that lets a call reach keys of several slots of its node
# (APPLY_CLUSTER_SCRIPT). There, before anything is written, the call looks for a key
# that is never written (the probe, ``Layout.probe``) in each part's slot and in the
# share's: a slot the node does not hold fails the call, and so does a slot being
# migrated (Redis answers a missing key there with a redirection), with nothing written.
# A slot that passes cannot move while the script runs.
#
# The commands are a run of: name, the index of its key in the part's keys, its
# argument count and its arguments (one packed argument instead of thousands keeps
# the client's work small). S, H, C and R are the session and dashboard commands of
# stream/dashboard.py; AMAX field offset raises an applied-offsets field
# (``Layout.applied``) to the offset, never lowers it. The fence is a list of [index in
# keys, field, offset] triples: the offsets this worker knows Redis holds. If Redis
# holds less in any part (it lost writes), nothing is written and the call returns
# 'LOST'; else the ids of the sessions whose rows it held already (S).
APPLY_SCRIPT = (
    dashboard.LUA
    + FENCE_LUA
    + """
SHARE = ARGV[2]
local parts = {}
for p = 3, #ARGV do
  local part = cmsgpack.unpack(ARGV[p])
  local K = part[4] or KEYS
  if part[4] then redis.call('EXISTS', part[5]) end
  if lost(part[2], K) then return 'LOST' end
  parts[#parts + 1] = part
end
if parts[1][4] then redis.call('EXISTS', SHARE .. ':probe') end
local held = {}
for p = 1, #parts do
  local ops, K = parts[p][1], parts[p][4] or KEYS
  DASH = parts[p][3]
  local i, n = 1, #ops
  while i <= n do
    local name, c = ops[i], ops[i + 2]
    local key = K[ops[i + 1]]
    if name == 'H' then
      hits(key, ops, i + 3, c)
    elseif name == 'S' then
      if start(key, ops, i + 3, c) then held[#held + 1] = ops[i + 4] end
    elseif name == 'C' then
      close(key, ops, i + 3, c)
    elseif name == 'R' then
      rate(ops, i + 3)
    elseif name == 'AMAX' then
      local field, offset = ops[i + 3], ops[i + 4]
      local cur = redis.call('HGET', key, field)
      if not cur or tonumber(cur) < tonumber(offset) then redis.call('HSET', key, field, offset) end
    else
      redis.call(name, key, unpack(ops, i + 3, i + 2 + c))
    end
    i = i + 3 + c
  end
end
flush()
return held
"""
)
APPLY_CLUSTER_SCRIPT = "#!lua flags=allow-cross-slot-keys\n" + APPLY_SCRIPT

# A batch's reads in one call. KEYS: the session hashes; ARGV[1]: MessagePack of, per
# session, the fields to read; ARGV[2], of the place of ``latest`` among them (0: not
# read). Returns MessagePack of each session's values, in that order, false where
# missing; after ``latest`` (its latest score's field name), that field's entry.
READ_SCRIPT = """
local fields, at = cmsgpack.unpack(ARGV[1]), cmsgpack.unpack(ARGV[2])
local out = {}
for s = 1, #KEYS do
  local row = redis.call('HMGET', KEYS[s], unpack(fields[s]))
  local a = at[s]
  if a > 0 then
    local name = row[a]
    local entry = name and string.byte(name, 1) ~= 123 and redis.call('HGET', KEYS[s], name)
    table.insert(row, a + 1, entry or false)
  end
  out[s] = row
end
return cmsgpack.pack(out)
"""

# Stored scores, for copies published again. KEYS: the session hash of each score;
# ARGV[1]: MessagePack of the score's field in each. Returns MessagePack of [entry,
# packed row] per score, false where the entry is missing.
STORED_SCRIPT = """
local names = cmsgpack.unpack(ARGV[1])
local out = {}
for i = 1, #names do
  local row = redis.call('HMGET', KEYS[i], names[i], 'row')
  if row[1] then out[i] = row else out[i] = false end
end
return cmsgpack.pack(out)
"""

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


class _Ops:
    """Commands collected for APPLY_SCRIPT."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.index: dict[str, int] = {}
        self.argv: list[Any] = []

    def add(self, command: str, key: str | None, *args: Any) -> None:
        """Add a command on ``key`` (None: a command of the script's own, without one)."""
        k = 0 if key is None else self.index.get(key)
        if k is None:
            assert key is not None
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
        """``lanes``, on Redis Cluster, gives the lane of the master holding a key's slot;
        then each master gets a call of its own, a part per partition. Without it,
        every call goes on one lane of ``client``.

        On Redis Cluster each partition's hot set is kept in its own dashboard share
        (the share must be on the partition's master); on a single Redis, where one
        call writes every partition, partition 0's share keeps them all.
        """
        self.r = client
        self.prefix = prefix
        self.layout = keys.Layout(prefix, partitions)
        self.ttl = ttl_s
        # Numbers the scripts hand straight to Redis go as text: a Lua number given to
        # redis.call is formatted with snprintf first, a tenth of Redis's time in a probe.
        self._ttl = str(ttl_s)
        self.retries = retries
        self._dash_cfg = msgpack.packb(
            dashboard.config(ttl_s, dashboard_retention_s), use_bin_type=False
        )
        self._park = AsyncScript(client, PARK_SCRIPT)
        self._release = AsyncScript(client, RELEASE_SCRIPT)
        self._apply = AsyncScript(client, APPLY_SCRIPT if lanes is None else APPLY_CLUSTER_SCRIPT)
        self._stored = AsyncScript(client, STORED_SCRIPT)
        self._read = AsyncScript(client, READ_SCRIPT)
        self._lanes = lanes
        self.lane = ScriptLane(client) if lanes is None else None
        # The fence: the applied offsets this worker knows Redis holds, by (input kind,
        # partition). Every write checks them first (APPLY_SCRIPT) and raises RedisLost
        # where Redis holds less.
        self.expected: dict[tuple[str, int], int] = {}
        self.layout_recorded = False  # the layout is recorded in Redis (``record_layout``)
        clustered = lanes is not None
        self._dashes = [self.layout.dash(p if clustered else 0) for p in range(partitions)]

    def dash(self, partition: int) -> str:
        """Return the prefix of the dashboard aggregates a partition's sessions count in."""
        return self._dashes[partition]

    @property
    def clustered(self) -> bool:
        """Whether calls go per partition, to the node holding it (Redis Cluster)."""
        return self._lanes is not None

    def _group(self, partition: int) -> int:
        """The call a partition's keys go in: its own on Redis Cluster, else one."""
        return partition if self._lanes is not None else 0

    async def _lane(self, key: str) -> ScriptLane:
        if self._lanes is None:
            assert self.lane is not None
            return self.lane
        if not self._lanes.ready:
            await self._lanes.refresh()
        return self._lanes(key)

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Make a call, again after a connection failure or a cluster's moving slot."""
        delay = 0.1
        for attempt in range(1, self.retries + 1):
            try:
                if attempt > 1 and self._lanes is not None:
                    await self._lanes.refresh()
                return await call()
            except Exception as exc:
                if not _transient(exc):
                    raise
                if attempt == self.retries:
                    raise InfrastructureError(
                        f"redis {what} failed {attempt} times: {exc}"
                    ) from exc
                log.warning("redis %s failed (%s); retry %d in %.1f s", what, exc, attempt, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

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

        await self._retry("layout", run)
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
            groups.setdefault(self._group(partition), []).append(sid)
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
            sent.append((sids, await self._send("read", self._read, names, args)))

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
            groups.setdefault(self._group(partition), []).append(k)
        found: list[Any] = [None] * len(items)
        sent = []
        for ks in groups.values():
            names = [self.layout.session(items[k][1], items[k][0]) for k in ks]
            packed = msgpack.packb([items[k][2] for k in ks], use_bin_type=False)
            sent.append((ks, await self._send("stored scores", self._stored, names, [packed])))
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
            groups.setdefault(self._group(h.partition), []).append(k)
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
            fence = msgpack.packb(self._fence(names, None, group), use_bin_type=False)
            args: list[bytes | int] = [
                self.ttl,
                limits.PARKED_HITS_MAX,
                len(ks),
                fence,
                *(hits[k].pack() for k in ks),
            ]
            replied = _fenced("park", await (await self._send("park", self._park, names, args)))
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
            groups.setdefault(self._group(partition), []).append(sid)
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
            fence = msgpack.packb(self._fence(names, None, group), use_bin_type=False)
            replied = await (await self._send("release", self._release, names, [len(sids), fence]))
            for sid, items in zip(sids, _fenced("release", replied), strict=True):
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

        await self._retry("forget pending", run)

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
        batch = _Batch(self)
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

    def _fence(self, names: list[str], index: dict[str, int] | None, group: int) -> list[Any]:
        """Return the fence of a script call, adding its keys to ``names``.

        ``index`` maps the keys already in ``names`` to their place (1-based), if known;
        only the partitions of ``group`` are fenced.
        """
        fence = []
        for (kind, partition), offset in self.expected.items():
            if self._group(partition) != group:
                continue
            key = self.layout.applied(partition)
            k = None if index is None else index.get(key)
            if k is None:
                names.append(key)
                k = len(names)
                if index is not None:
                    index[key] = k
            fence.append([k, kind, str(offset)])
        return fence

    async def applied(self, partitions: Collection[int]) -> dict[tuple[str, int], int | None]:
        """Return the applied offsets Redis holds for input partitions (None: none)."""
        order = sorted(partitions)

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for partition in order:
                pipe.hmget(self.layout.applied(partition), ["sessions", "hits"])
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
        """Send a script call on its lane now; return what to await for its reply.

        If the connection fails before the reply, the call is made again (with the
        retries of ``_retry``): the store's scripts are idempotent.
        """
        key = names[0] if names else ""
        lane = await self._lane(key)

        async def run() -> Any:
            return await (await self._lane(key)).call(script, names, args)

        try:
            sent: asyncio.Future[Any] | None = await lane.send(script, names, args)
        except Exception as exc:
            if not _transient(exc):
                raise
            log.warning("redis %s failed (%s); retrying", what, exc)
            sent = None

        async def replied() -> Any:
            if sent is not None:
                try:
                    return await lane.reply(script, sent, names, args)
                except Exception as exc:
                    if not _transient(exc):
                        raise
                    log.warning("redis %s failed (%s); retrying", what, exc)
            return await self._retry(what, run)

        return replied()

    async def _send_parts(self, what: str, parts: list[tuple[str, bytes]]) -> Awaitable[list[Any]]:
        """Send a write's parts (first key, packed part), one call per master; return what
        to await for the replies, one per call.

        A call whose reply is lost (a connection failure, a failover, a slot moved) is
        made again once the slot map is read again, its parts grouped by master anew:
        the apply script is idempotent, and a call that reaches a slot its node no
        longer holds fails before it writes anything.
        """
        script = self._apply

        def arguments(lane: ScriptLane, group: list[tuple[str, bytes]]) -> list[Any]:
            return [self._dash_cfg, self._share(lane), *(part for _, part in group)]

        sent = []
        for lane, group in await self._by_master(parts):
            args = arguments(lane, group)
            try:
                future: asyncio.Future[Any] | None = await lane.send(script, [], args)
            except Exception as exc:
                if not _transient(exc):
                    raise
                log.warning("redis %s failed (%s); retrying", what, exc)
                future = None
            sent.append((lane, group, args, future))

        async def again(group: list[tuple[str, bytes]]) -> list[Any]:
            out = []
            for lane, regrouped in await self._by_master(group):
                out.append(await lane.call(script, [], arguments(lane, regrouped)))
            return out

        async def replied() -> list[Any]:
            out, failed = [], []
            for lane, group, args, future in sent:
                if future is not None:
                    try:
                        out.append(await lane.reply(script, future, [], args))
                        continue
                    except Exception as exc:
                        if not _transient(exc):
                            raise
                        log.warning("redis %s failed (%s); retrying", what, exc)
                failed += group
            if failed:
                out += await self._retry(what, lambda: again(failed))
            return out

        return replied()

    def _share(self, lane: ScriptLane) -> str:
        """The dashboard share a master's calls add their sums to: that of the lowest
        partition it holds, the same for every call while the slots stay put."""
        assert self._lanes is not None
        for p in range(self.layout.partitions):
            if self._lanes(self.layout.applied(p)) is lane:
                return self._dashes[p]
        raise AssertionError("a master holding none of the partitions")

    async def _by_master(
        self, parts: list[tuple[str, bytes]]
    ) -> list[tuple[ScriptLane, list[tuple[str, bytes]]]]:
        """Group parts by the lane of the master holding their first key's slot."""
        groups: dict[int, tuple[ScriptLane, list[tuple[str, bytes]]]] = {}
        for key, part in parts:
            lane = await self._lane(key)
            groups.setdefault(id(lane), (lane, []))[1].append((key, part))
        return list(groups.values())

    async def watermarks(
        self, partitions: Sequence[int]
    ) -> dict[int, dict[str, tuple[float, float]]]:
        """Return partitions' stored (event time, wall time) marks in ms, by input kind."""

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=False)
            for partition in partitions:
                pipe.hgetall(self.layout.watermark(partition))
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
                    self.layout.open_sessions(partition),
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
                pipe.zcard(self.layout.open_sessions(partition))
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
        batch = _Batch(self)
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
        batch = _Batch(self)
        for partition, sids in closed.items():
            if sids:
                ops, _ = batch.ops(partition)
                ops.add("ZREM", self.layout.open_sessions(partition), *sids)
        await (await batch.send("finish close"))


NO_CHANNEL = "(none)"


class _Batch:
    """A write's commands, by the call they go in (see ``RedisStore._group``)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.groups: dict[int, tuple[_Ops, list[str]]] = {}

    def ops(self, partition: int) -> tuple[_Ops, int]:
        """Return the commands of a partition's call and its dashboard's place in it."""
        group = self.store._group(partition)
        found = self.groups.get(group)
        if found is None:
            found = self.groups[group] = (_Ops(), [])
        ops, dashes = found
        dash = self.store._dashes[partition]
        if dash not in dashes:
            dashes.append(dash)
        return ops, dashes.index(dash) + 1

    async def send(self, what: str, offsets: Offsets | None = None) -> Awaitable[set[str]]:
        """Send the write now; return what to await for all of it to have landed.

        The awaited result is the sessions whose rows Redis held already (see S). A
        single Redis gets one call; Redis Cluster, one call per master, with a part per
        partition (``RedisStore._send_parts``).

        Each part carries the fence of its partitions (``expected``); once they have
        landed, the offsets raised are what this worker knows Redis holds.
        """
        store = self.store
        clustered = store.clustered
        parts: list[tuple[str, bytes]] = []
        replies = []
        for group in sorted(self.groups):
            ops, dashes = self.groups[group]
            if not ops.argv:
                continue
            names = ops.keys
            if not names:  # a call without keys of its own: give it one of its slot
                names.append(dashes[0] + ":meta")
            fence = store._fence(names, ops.index, group)
            part = msgpack.packb(
                [ops.argv, fence, dashes, names, store.layout.probe(group)]
                if clustered
                else [ops.argv, fence, dashes, False],
                use_bin_type=False,
            )
            if clustered:
                parts.append((names[0], part))
            else:
                args = [store._dash_cfg, dashes[0], part]
                replies.append(await store._send(what, store._apply, names, args))
        if parts:
            replies.append(await store._send_parts(what, parts))

        async def landed() -> set[str]:
            held: set[str] = set()
            for replied in replies:
                got = await replied
                for reply in got if clustered else [got]:
                    held.update(sid.decode() for sid in _fenced(what, reply))
            for key, offset in (offsets or {}).items():
                if offset > store.expected.get(key, -1):
                    store.expected[key] = offset
            return held

        return landed()


async def _nothing() -> set[str]:
    return set()


def _transient(exc: BaseException) -> bool:
    """Whether a failed call may succeed if made again: the connection broke, or a
    cluster's slot is moving (a failover under way)."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return True
    if isinstance(exc, ClusterError | ClusterDownError | TryAgainError | AskError | MovedError):
        return True
    return isinstance(exc, ResponseError) and is_moving(exc)


def _fenced(what: str, reply: T) -> T:
    """Return a script's reply, or raise RedisLost where its fence found Redis behind."""
    if reply == b"LOST":
        raise RedisLost(f"redis holds less than this worker wrote ({what} refused)")
    return reply


def _num(x: float) -> str:
    """A number as text: a whole one without its fraction (cheaper than ``repr``)."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()
