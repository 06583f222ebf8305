"""What this worker knows Redis holds of its partitions' sessions, kept in memory.

A partition belongs to one worker at a time, and every write to its sessions in Redis
is this worker's: after a write, the worker knows the session's state without reading
it back. The cache keeps that state (and the hit numbers applied) for the sessions it
wrote or read last, so a session's next batch of hits, and its close, need no read.

It is only ever what Redis holds, or what a write under way will make it hold:
- an entry is put when the worker computes a write (a run's later batches already work
  on it, see ``HitsRun``); a write that does not land either raises ``RedisLost``
  (the worker drops the cache and reads the input again) or makes the worker exit;
- a partition given up is dropped (``drop_partitions``), and so is everything when Redis
  lost writes (``clear``);
- a closed session is dropped once it leaves its open set; an entry older than
  ``max_age_s`` is read again, well before Redis could expire the session
  (``SCORER_SESSION_TTL_S`` after its last write);
- at most ``capacity`` sessions, the least recently used going first.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass

from stream.state import SessionState


@dataclass
class Cached:
    """A session as Redis holds it, and the hit numbers applied to it."""

    state: SessionState
    applied: set[int]
    at: float  # when it was put (monotonic seconds)
    ttl_at: float  # when a write last set its TTL in Redis (monotonic seconds)


class SessionCache:
    """The sessions of this worker's partitions, as Redis holds them."""

    def __init__(self, capacity: int = 50_000, max_age_s: float = 600.0) -> None:
        self.capacity = capacity
        self.max_age_s = max_age_s
        self._entries: collections.OrderedDict[str, Cached] = collections.OrderedDict()
        self._by_partition: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, sid: str, partition: int) -> Cached | None:
        """Return a session's entry if it is there, of that partition and fresh."""
        found = self._entries.get(sid)
        if found is None:
            return None
        if found.state.partition != partition or time.monotonic() - found.at > self.max_age_s:
            self.drop([sid])
            return None
        self._entries.move_to_end(sid)
        return found

    def put(
        self, sid: str, state: SessionState, applied: set[int], ttl_at: float | None = None
    ) -> None:
        """Keep a session's state (its ``partition`` set) and the hits applied to it.

        ``ttl_at`` is when its TTL was last set, if not by the write that puts it.
        """
        assert state.partition is not None, "a cached state names its partition"
        old = self._entries.pop(sid, None)
        if old is not None and old.state.partition != state.partition:
            self._unindex(sid, old.state.partition)
        now = time.monotonic()
        self._entries[sid] = Cached(state, applied, now, now if ttl_at is None else ttl_at)
        self._by_partition.setdefault(state.partition, set()).add(sid)
        while len(self._entries) > self.capacity:
            gone, entry = self._entries.popitem(last=False)
            self._unindex(gone, entry.state.partition)

    def ttl_due(self, sid: str, partition: int, every_s: float) -> bool:
        """Whether a write to a session should set its TTL again: the cache does not
        know it, or its TTL was set more than ``every_s`` ago."""
        found = self.get(sid, partition)
        return found is None or time.monotonic() - found.ttl_at > every_s

    def ttl_set_at(self, sid: str) -> float | None:
        """When a session's TTL was last set, if the cache knows it."""
        found = self._entries.get(sid)
        return None if found is None else found.ttl_at

    def drop(self, sids: Iterable[str]) -> None:
        """Forget sessions."""
        for sid in sids:
            entry = self._entries.pop(sid, None)
            if entry is not None:
                self._unindex(sid, entry.state.partition)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget every session of these partitions."""
        for partition in partitions:
            for sid in self._by_partition.pop(partition, set()):
                self._entries.pop(sid, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self._by_partition.clear()

    def _unindex(self, sid: str, partition: int | None) -> None:
        if partition is None:
            return
        members = self._by_partition.get(partition)
        if members is not None:
            members.discard(sid)
            if not members:
                del self._by_partition[partition]
