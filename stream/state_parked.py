"""Hits parked beside their session until its start score is out, and released then."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
from redis.commands.core import AsyncScript

from contracts import keys, limits
from stream.redis_calls import ScriptCalls, fenced
from stream.scripts import PARK_SCRIPT, RELEASE_SCRIPT
from stream.session_state import ParkedHit, Sessions


class StateParked:
    """Parks hits in Redis and releases sessions to them."""

    def __init__(self, client: Any, layout: keys.Layout, calls: ScriptCalls, ttl_s: int) -> None:
        self.r = client
        self.layout = layout
        self.calls = calls
        self.ttl = ttl_s
        self._park = AsyncScript(client, PARK_SCRIPT)
        self._release = AsyncScript(client, RELEASE_SCRIPT)

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
