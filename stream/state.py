"""The Redis session store: per-session state, applied hits, parked hits and scores.

Layout (keys from ``contracts.keys``, all with the session TTL):
- state hash: ``client_id``, ``start`` (ISO start time), ``vec`` (session features as
  float32 bytes) and one field per hit-state counter (``s:<name>``);
- applied set: hit numbers already applied (a redelivered hit changes nothing);
- pending list: hits that arrived before their session row;
- score key: the latest ScoreEvent JSON; history hash: every score by trigger:hit.

Each batch reads with one pipeline and writes with one MULTI/EXEC transaction, so a
crash leaves either all of a batch's writes or none of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contracts import keys
from features.hits import STATE_NAMES, empty_state

log = logging.getLogger(__name__)
T = TypeVar("T")

STATE_FIELDS = [keys.state_field(name) for name in STATE_NAMES]

# Park a hit only while its session is not released yet, atomically with that check.
PARK_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], 'ready') == 1 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# Release a session to the hits agent (its session-start score is on Kafka) and hand
# over the hits parked so far; no hit parks after this.
RELEASE_SCRIPT = """
redis.call('HSET', KEYS[1], 'ready', '1')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('LRANGE', KEYS[2], 0, -1)
"""


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
    latest: bytes | None = None  # the latest ScoreEvent JSON
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
    partition: int = 0
    event_ms: float = 0.0


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


@dataclass
class CloseWrite:
    """A session closed for inactivity: its final score and, unless converted, outcome."""

    session_id: str
    score_json: bytes
    history_field: str
    outcome: bytes | None


class RedisStore:
    """Reads and writes session state in Redis."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, ttl_s: int, retries: int) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl = ttl_s
        self.retries = retries
        self._park = client.register_script(PARK_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

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

    async def read(self, session_ids: Sequence[str]) -> dict[str, SessionState]:
        """Read the state of sessions (one round trip)."""
        sids = list(dict.fromkeys(session_ids))

        async def run() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for sid in sids:
                pipe.hgetall(self._k(keys.session_key, sid))
                pipe.get(self._k(keys.latest_score_key, sid))
            return await pipe.execute()

        out = {}
        results = await self._retry("read", run)
        for sid, h, latest in zip(sids, results[0::2], results[1::2], strict=True):
            state = empty_state()
            for i, f in enumerate(STATE_FIELDS):
                v = h.get(f.encode())
                if v is not None:
                    state[i] = float(v)
            vec = h.get(b"vec")
            out[sid] = SessionState(
                known=b"start" in h,
                ready=b"ready" in h,
                client_id=_text(h.get(b"client_id")),
                start=_text(h.get(b"start")),
                vector=None if vec is None else np.frombuffer(vec, dtype=np.float32).copy(),
                state=state,
                partition=None if b"p" not in h else int(h[b"p"]),
                closed=b"closed" in h,
                latest=latest,
                outcome=h.get(b"outcome"),
            )
        return out

    async def applied(self, pairs: Sequence[tuple[str, int]]) -> list[bool]:
        """Tell which (session, hit_number) pairs have been applied already."""
        if not pairs:
            return []

        async def run() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for sid, n in pairs:
                pipe.sismember(self._k(keys.applied_hits_key, sid), str(n))
            return await pipe.execute()

        return [bool(x) for x in await self._retry("applied", run)]

    async def stored_scores(self, items: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """Return the stored score JSON for (session, history field) pairs."""
        if not items:
            return []

        async def run() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for sid, field in items:
                pipe.hget(self._k(keys.score_history_key, sid), field)
            return await pipe.execute()

        return list(await self._retry("stored scores", run))

    async def park(self, sid: str, raw_hit: bytes) -> bool:
        """Park a hit until its session row arrives; False when the row is there now."""

        async def run() -> Any:
            return await self._park(
                keys=[self._k(keys.session_key, sid), self._k(keys.pending_hits_key, sid)],
                args=[raw_hit, self.ttl],
            )

        return bool(await self._retry("park", run))

    async def release(self, sids: Sequence[str]) -> list[tuple[str, bytes]]:
        """Mark sessions ready for their hits; return the hits parked for them."""
        if not sids:
            return []

        async def run() -> list[Any]:
            pipe = self.r.pipeline(transaction=False)
            for sid in sids:
                await self._release(
                    keys=[self._k(keys.session_key, sid), self._k(keys.pending_hits_key, sid)],
                    args=[self.ttl],
                    client=pipe,
                )
            return await pipe.execute()

        results = await self._retry("release", run)
        return [(sid, raw) for sid, items in zip(sids, results, strict=True) for raw in items]

    async def forget_pending(self, sids: Sequence[str]) -> None:
        """Drop the parked hits of sessions once they are back on the hits topic."""
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
    ) -> None:
        """Write a batch's sessions, states, applied hits and scores atomically.

        Open sessions are kept in their partition's sorted set, scored by their latest
        event time (only ever raised), for the inactivity close; ``watermarks`` maps an
        input kind and partition to its (event time, wall time) high-water marks in ms.
        """
        if not sessions and not hits and not watermarks:
            return

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=True)
            for s in sessions:
                state_key = self._k(keys.session_key, s.session_id)
                fields: dict[str | bytes, bytes | str | int | float] = {
                    "start": s.start,
                    "vec": s.vector.astype(np.float32).tobytes(),
                    "p": s.partition,
                }
                if s.client_id is not None:
                    fields["client_id"] = s.client_id
                pipe.hset(state_key, mapping=fields)  # type: ignore[arg-type]
                pipe.expire(state_key, self.ttl)
                self._score(pipe, s.session_id, [(s.history_field, s.score_json)])
                pipe.zadd(
                    keys.open_sessions_key(s.partition, self.prefix),
                    {s.session_id: s.event_ms},
                    gt=True,
                )
            for h in hits:
                state_key = self._k(keys.session_key, h.session_id)
                mapping: dict[str, bytes | str] = {
                    f: repr(float(v)) for f, v in zip(STATE_FIELDS, h.state, strict=True)
                }
                if h.outcome is not None:
                    mapping["outcome"] = h.outcome
                pipe.hset(state_key, mapping=mapping)  # type: ignore[arg-type]
                pipe.expire(state_key, self.ttl)
                applied_key = self._k(keys.applied_hits_key, h.session_id)
                pipe.sadd(applied_key, *h.applied)
                pipe.expire(applied_key, self.ttl)
                self._score(pipe, h.session_id, h.scores)
                if not h.closed:
                    pipe.zadd(
                        keys.open_sessions_key(h.partition, self.prefix),
                        {h.session_id: h.event_ms},
                        gt=True,
                    )
            for (kind, partition), (event_ms, wall_ms) in (watermarks or {}).items():
                pipe.hset(
                    keys.watermark_key(partition, self.prefix),
                    mapping={f"{kind}_event_ms": repr(event_ms), f"{kind}_wall_ms": repr(wall_ms)},
                )
            return await pipe.execute()

        await self._retry("write", run)

    async def watermark(self, partition: int) -> dict[str, tuple[float, float]]:
        """Return a partition's stored (event time, wall time) marks in ms, by input kind."""

        async def run() -> Any:
            return await self.r.hgetall(keys.watermark_key(partition, self.prefix))

        h = await self._retry("watermark", run)
        out: dict[str, tuple[float, float]] = {}
        for kind in ("sessions", "hits"):
            event, wall = h.get(f"{kind}_event_ms".encode()), h.get(f"{kind}_wall_ms".encode())
            if event is not None and wall is not None:
                out[kind] = (float(event), float(wall))
        return out

    async def due(self, partition: int, upto_ms: float, limit: int) -> list[tuple[str, float]]:
        """Return open sessions of a partition whose latest event is at or before upto_ms."""

        async def run() -> Any:
            return await self.r.zrangebyscore(
                keys.open_sessions_key(partition, self.prefix),
                "-inf",
                upto_ms,
                start=0,
                num=limit,
                withscores=True,
            )

        return [(sid.decode(), float(ms)) for sid, ms in await self._retry("due", run)]

    async def open_count(self, partition: int) -> int:
        """Count a partition's open sessions."""

        async def run() -> Any:
            return await self.r.zcard(keys.open_sessions_key(partition, self.prefix))

        return int(await self._retry("open count", run))

    async def prepare_close(self, closes: Sequence[CloseWrite]) -> None:
        """Store the final scores and outcomes of sessions about to be closed.

        Stored first, published next, marked closed last: a crash in between finds them
        here and publishes the very same copies again.
        """
        if not closes:
            return

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=True)
            for c in closes:
                self._score(pipe, c.session_id, [(c.history_field, c.score_json)])
                if c.outcome is not None:
                    pipe.hset(self._k(keys.session_key, c.session_id), "outcome", c.outcome)
            return await pipe.execute()

        await self._retry("prepare close", run)

    async def finish_close(self, partition: int, sids: Sequence[str]) -> None:
        """Mark sessions closed and take them out of their partition's open set."""
        if not sids:
            return

        async def run() -> Any:
            pipe = self.r.pipeline(transaction=True)
            for sid in sids:
                pipe.hset(self._k(keys.session_key, sid), "closed", "1")
            pipe.zrem(keys.open_sessions_key(partition, self.prefix), *sids)
            return await pipe.execute()

        await self._retry("finish close", run)

    def _score(self, pipe: Any, sid: str, scores: list[tuple[str, bytes]]) -> None:
        if not scores:
            return
        history = self._k(keys.score_history_key, sid)
        pipe.hset(history, mapping=dict(scores))
        pipe.expire(history, self.ttl)
        pipe.set(self._k(keys.latest_score_key, sid), scores[-1][1], ex=self.ttl)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()
