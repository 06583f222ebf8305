"""Which sessions are being worked on, so that two jobs never change one at once.

The hits batches (and the release of parked hits) and the close sweep all read a
session's state, compute on it and write it back, with Redis and Kafka round trips in
between. Two of them on one session at once would lose an update or publish a close
before the hit it missed. One lock over all sessions keeps them apart too, but then a
hits batch waits for every close round, some 20 ms once a second at 1,000 events/s,
though a hit for a session closing right then is rare. Here a job holds only its own
sessions: a hits batch waits only for a round that closes one of its sessions, and
the sweep leaves out a session a hits batch holds (that session has just had an event,
so it is not idle anyway; the next sweep looks again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class SessionGate:
    """Sessions held by the job working on them; a job waits for the ones it needs."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self._freed = asyncio.Event()  # set, and replaced, whenever sessions are let go

    async def hold(self, sids: Iterable[str]) -> list[str]:
        """Wait until none of these sessions is held, then hold them all; return them."""
        wanted = set(sids)
        while not wanted.isdisjoint(self.held):
            await self._freed.wait()
        self.held |= wanted
        return list(wanted)

    def hold_free(self, sids: Iterable[str]) -> list[str]:
        """Hold those of these sessions that nobody holds, at once; return them."""
        free = [sid for sid in dict.fromkeys(sids) if sid not in self.held]
        self.held.update(free)
        return free

    def let_go(self, sids: Iterable[str]) -> None:
        """Stop holding these sessions, and wake the jobs waiting for any."""
        self.held.difference_update(sids)
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()
