"""Hits that come before their session's start score is out: parked, then released.

A hit may only be applied once its session's start score is on Kafka (the session is
"ready"). A hit read before that is parked in Redis beside its session; once the
session's start score is published the session is released, and its parked hits come
back to be applied like any other.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Collection, Iterator, Mapping
from typing import Any

from contracts import limits
from stream.records import Context, Output, Record
from stream.state import ParkedHit, SessionState

START_WAIT_S = 2.0  # longest a hit waits for its session's start score in this worker


class Parking:
    """Parks hits whose session is not ready, and hands them back at its release."""

    def __init__(self, ctx: Context, hits_topic: str) -> None:
        self.ctx = ctx
        self.hits_topic = hits_topic  # named in the dead letters of parked hits
        # Sessions stored by this worker whose start score is being published.
        self.starting: dict[str, asyncio.Event] = {}
        # Sessions whose parked hits are being applied (see ``release``), each with the
        # number of releases under way (a redelivered row may race the original): not
        # to be closed while any is.
        self.releasing: collections.Counter[str] = collections.Counter()

    def will_start(self, sids: Collection[str]) -> None:
        """Note sessions this worker stored whose start score is about to be published."""
        for sid in sids:
            self.starting.setdefault(sid, asyncio.Event())

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

    def forget_starting(self) -> None:
        """Stop waiting for start scores that an abandoned fetch was to publish."""
        for started in self.starting.values():
            started.set()
        self.starting.clear()

    async def release(self, sids: Mapping[str, int]) -> list[Record]:
        """Let hits through for sessions whose start score is on Kafka; return parked hits.

        The caller applies the parked hits, publishes what they produce and then drops
        them with ``forget_pending``. Until then they stay in Redis: after a crash the
        session's row is delivered again and releases them again.
        """
        parked, ready = await self.ctx.store.release_sessions(sids)
        for sid in ready:
            known = self.ctx.cache.get(sid, sids[sid])
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
        await self.ctx.store.forget_pending(sids)

    async def park(
        self,
        parsed: list[tuple[Record, dict[str, Any]]],
        states: dict[str, SessionState],
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
        store = self.ctx.store
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
            states.update((await store.read({s: where[s] for s in sorted(waiting)}))[0])
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
        flags = await store.park([hit for _, hit in candidates])
        ready = sorted(
            {hit.session_id for (_, hit), f in zip(candidates, flags, strict=True) if f is False}
        )
        if ready:
            # Their rows arrived while this batch ran: read them and apply the hits.
            states.update((await store.read({s: where[s] for s in ready}))[0])
        for (i, _), f in zip(candidates, flags, strict=True):
            if f is None:
                error = f"session already has {limits.PARKED_HITS_MAX} hits waiting for its row"
                out.refuse(parsed[i][0], "park", error, "parked_full")
                refused.add(i)
        return {i for (i, _), f in zip(candidates, flags, strict=True) if f is True}
