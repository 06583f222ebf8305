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

from collections.abc import Awaitable, Collection, Mapping, Sequence
from typing import Any

import msgpack

from contracts import keys
from stream import dashboard
from stream.nodes import NodeLanes
from stream.redis_calls import InfrastructureError, Offsets, RedisLost, ScriptCalls
from stream.session_state import (
    CloseWrite,
    HitWrite,
    ParkedHit,
    Sessions,
    SessionState,
    SessionWrite,
)
from stream.state_closes import StateCloses
from stream.state_parked import StateParked
from stream.state_reads import StateReads
from stream.state_writes import StateWrites

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


class RedisStore:
    """The session state in Redis (a single server, or a Redis Cluster).

    One part per job: ``reads`` (sessions, stored scores, offsets and marks),
    ``writes`` (a batch's writes, in one atomic call), ``parked`` (hits waiting for
    their session's start), ``closes`` (idle sessions closed); ``calls`` gets their
    script calls to the right server, fenced and retried.
    """

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
        dash_cfg = msgpack.packb(dashboard.config(ttl_s, dashboard_retention_s), use_bin_type=False)
        self.calls = ScriptCalls(client, self.layout, retries, dash_cfg, lanes)
        self.reads = StateReads(client, self.layout, self.calls)
        self.writes = StateWrites(client, self.layout, self.calls, ttl_s)
        self.parked = StateParked(client, self.layout, self.calls, ttl_s)
        self.closes = StateCloses(client, self.layout, self.calls)

    @property
    def expected(self) -> dict[tuple[str, int], int]:
        """The fence: the applied offsets this worker knows Redis holds, by (input kind,
        partition). Every write checks them first and raises RedisLost where Redis holds
        less."""
        return self.calls.expected

    @property
    def layout_recorded(self) -> bool:
        """Whether the key layout is recorded in Redis (``record_layout``)."""
        return self.writes.layout_recorded

    @layout_recorded.setter
    def layout_recorded(self, value: bool) -> None:
        self.writes.layout_recorded = value

    def dash(self, partition: int) -> str:
        """Return the prefix of the dashboard aggregates a partition's sessions count in."""
        return self.calls.dashes[partition]

    # Reads (stream/state_reads.py).

    async def read(
        self,
        sessions: Sessions,
        hits: Sequence[tuple[str, int]] = (),
        *,
        latest: bool | Collection[str] = True,
    ) -> tuple[dict[str, SessionState], list[bool]]:
        """Read sessions' state, and which of ``hits`` are applied (``send_read``)."""
        return await (await self.send_read(sessions, hits, latest=latest))

    async def send_read(
        self,
        sessions: Sessions,
        hits: Sequence[tuple[str, int]] = (),
        *,
        latest: bool | Collection[str] = True,
    ) -> Awaitable[tuple[dict[str, SessionState], list[bool]]]:
        """Send the read of sessions' state (``StateReads.send_read``); await the result
        for what it read."""
        return await self.reads.send_read(sessions, hits, latest=latest)

    async def latest_scores(self, sessions: Sessions) -> list[bytes | None]:
        """The latest score JSON of each session (None where it has none)."""
        if not sessions:
            return []
        states, _ = await self.read(sessions, latest=True)
        return [states[sid].latest for sid in sessions]

    async def stored_scores(self, items: Sequence[tuple[str, int, str]]) -> list[bytes | None]:
        """The stored score JSON of (session, partition, score field) triples."""
        return await self.reads.stored_scores(items)

    async def stored_copies(
        self, items: Sequence[tuple[str, int, str]]
    ) -> list[tuple[bytes | None, bytes | None]]:
        """The stored score JSON of (session, partition, score field) triples, each with
        the lead it made (``StateReads.stored_copies``)."""
        return await self.reads.stored_copies(items)

    async def applied(self, partitions: Collection[int]) -> dict[tuple[str, int], int | None]:
        """The applied offsets Redis holds for input partitions (None: none)."""
        return await self.reads.applied(partitions)

    async def watermarks(
        self, partitions: Sequence[int]
    ) -> dict[int, dict[str, tuple[float, float]]]:
        """Partitions' stored (event time, wall time) marks in ms, by input kind."""
        return await self.reads.watermarks(partitions)

    # Writes (stream/state_writes.py).

    async def record_layout(self) -> None:
        """Record the key layout where the API looks for it (``StateWrites``)."""
        await self.writes.record_layout()

    async def write(
        self,
        sessions: Sequence[SessionWrite],
        hits: Sequence[HitWrite],
        watermarks: dict[tuple[str, int], tuple[float, float]] | None = None,
        events: int | Mapping[int, int] = 0,
        offsets: Offsets | None = None,
    ) -> set[str]:
        """Write a batch atomically (``send_write``); return the sessions whose rows Redis
        held already. Raises RedisLost, having written nothing, if Redis lost writes."""
        return await (await self.send_write(sessions, hits, watermarks, events, offsets))

    async def send_write(
        self,
        sessions: Sequence[SessionWrite],
        hits: Sequence[HitWrite],
        watermarks: dict[tuple[str, int], tuple[float, float]] | None = None,
        events: int | Mapping[int, int] = 0,
        offsets: Offsets | None = None,
    ) -> Awaitable[set[str]]:
        """Send a batch's write (``StateWrites.send_write``); await the result for it to
        land."""
        return await self.writes.send_write(sessions, hits, watermarks, events, offsets)

    # Parked hits (stream/state_parked.py).

    async def park(self, hits: Sequence[ParkedHit]) -> list[bool | None]:
        """Park hits until their session rows arrive (``StateParked.park``)."""
        return await self.parked.park(hits)

    async def release(self, sessions: Sessions) -> list[ParkedHit]:
        """Mark sessions ready for their hits; return the hits parked for them."""
        return (await self.release_sessions(sessions))[0]

    async def release_sessions(self, sessions: Sessions) -> tuple[list[ParkedHit], set[str]]:
        """``release``, with the sessions marked (``StateParked.release_sessions``)."""
        return await self.parked.release_sessions(sessions)

    async def forget_pending(self, sessions: Sessions) -> None:
        """Drop the parked hits of sessions once they are applied."""
        await self.parked.forget_pending(sessions)

    # Closes (stream/state_closes.py).

    async def due(
        self, upto_ms: Mapping[int, float], limit: int
    ) -> dict[int, list[tuple[str, float]]]:
        """By partition, open sessions whose latest event is at or before its time."""
        return await self.closes.due(upto_ms, limit)

    async def open_count(self, partitions: Sequence[int]) -> int:
        """Count the open sessions of these partitions."""
        return await self.closes.open_count(partitions)

    async def prepare_close(self, closes: Sequence[CloseWrite]) -> None:
        """Store the final scores and outcomes of sessions about to be closed."""
        await self.closes.prepare_close(closes)

    async def finish_close(self, closed: Mapping[int, Sequence[str]]) -> None:
        """Take closed sessions out of their partitions' open sets."""
        await self.closes.finish_close(closed)
