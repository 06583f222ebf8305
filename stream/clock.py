"""Event time: each input partition's high-water marks, and when a session is idle."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping

from contracts import limits
from stream.state import HitWrite, RedisStore, SessionWrite

INPUT_KINDS = ("sessions", "hits")
IDLE_MS = 5000.0  # an input topic without events for this long is quiet

# (input kind, partition) -> (event-time high-water mark, wall time it was reached), in ms
Marks = dict[tuple[str, int], tuple[float, float]]


class EventClock:
    """Keeps each input topic's event-time mark by partition and tells the time from them.

    "sessions" and "hits" of one partition number are co-partitioned: a partition's
    event time comes from both its marks. The marks raised by a batch are stored with
    its write, so a worker taking a partition over goes on from them.
    """

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.watermarks: Marks = {}

    def raise_marks(self, kind: str, writes: list[SessionWrite] | list[HitWrite]) -> Marks:
        """Raise each partition's event-time high-water mark of one input topic.

        Returns the marks raised. A mark never passes the wall clock by more than
        ``FUTURE_SLACK_S``: one hit with a start and a hit_time far ahead must not close
        every open session early.
        """
        wall = time.time() * 1000.0
        ceiling = wall + limits.FUTURE_SLACK_S * 1000.0
        changed: Marks = {}
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
