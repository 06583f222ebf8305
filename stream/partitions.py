"""The input partitions this worker holds: where each goes on from, and whether Redis
holds what this worker wrote for it (checked after every assignment and every loss)."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, cast

from faust.types import TP

from contracts import topics
from stream.exits import fatal
from stream.faust_seam import Fetch, Rewind
from stream.metrics import ExitLog, WorkerMetrics
from stream.processor import Processor
from stream.recovery import Recovery
from stream.settings import StreamSettings

log = logging.getLogger(__name__)

Key = tuple[str, int]  # (input kind, partition): ("sessions", 3)


class Partitions:
    """Checks Redis against the input partitions held, and rewinds where it is behind."""

    def __init__(
        self,
        app: Any,
        settings: StreamSettings,
        processor: Processor,
        metrics: WorkerMetrics,
        exits: ExitLog,
        positions: dict[tuple[str, int], int],
    ) -> None:
        self.app = app
        self.settings = settings
        self.processor = processor
        self.metrics = metrics
        self.exits = exits
        self.positions = positions  # next offset to process, by (topic, partition)
        self.inputs = topics.InputTopics(settings.topic_prefix)
        # Input partitions whose Redis state this worker has checked since their
        # assignment or the last loss; one check at a time.
        self.checked: set[Key] = set()
        self.checking = asyncio.Lock()
        # Partitions being read again: the offset their next fetch must start at.
        self.read_from: dict[Key, int] = {}

    @functools.cached_property
    def recovery(self) -> Recovery:
        """What checks Redis against the input (stream/recovery.py)."""
        names = {kind: self.inputs.name(kind) for kind in topics.InputTopics.KINDS}
        return Recovery(self.settings, self.processor.store, names)

    def key(self, tp: Any) -> Key:
        """The (input kind, partition) of a topic partition."""
        return (self.inputs.kind(tp.topic), tp.partition)

    def _tp(self, key: Key) -> TP:
        return TP(self.inputs.name(key[0]), key[1])

    def assigned(self) -> list[Any]:
        """The input topic partitions assigned to this worker (none while rebalancing)."""
        try:
            assigned = self.app.consumer.assignment()
        except Exception:  # noqa: BLE001 - no consumer yet (starting or rebalancing)
            return []
        return [tp for tp in assigned if tp.topic in self.inputs]

    def mine(self) -> set[int]:
        """Return the input partition numbers assigned to this worker."""
        return {tp.partition for tp in self.assigned()}

    async def admit(self, fetch: Fetch) -> dict[Key, int]:
        """Make sure a fetch may be processed; return the next offset of its partitions.

        A fetch made before its partition was rewound elsewhere is refused (``Rewind``
        to where it must start); where Redis has not been checked since an assignment
        or a loss, it is checked first (``check``). Called under ``checking``.
        """
        going_on = {self.key(tp): recs[0].offset for tp, recs in fetch.items()}
        stale = {
            tp
            for tp, recs in fetch.items()
            if self.read_from.get(self.key(tp), recs[0].offset) != recs[0].offset
        }
        if stale:
            raise Rewind({tp: self.read_from[self.key(tp)] for tp in stale})
        for key in going_on:
            self.read_from.pop(key, None)
        if not self.checked.issuperset(going_on):
            await self.check(going_on)
        return going_on

    async def check(self, going_on: dict[Key, int]) -> None:
        """Check Redis for every assigned input partition; rewind where it is behind.

        ``going_on`` gives the next offset of the partitions in the fetch in hand; the
        others go on from where this worker read them last, or from the group's
        committed offset. Raises Rewind when a partition of the fetch must be read
        again from elsewhere.
        """
        nxt: dict[Key, int | None] = dict(going_on)
        for tp in self.assigned():
            nxt.setdefault(self.key(tp), self.positions.get((tp.topic, tp.partition)))
        with fatal(self.exits, "checking Redis against the input"):
            rewinds = await self.recovery.check(nxt)
        self.checked = set(nxt)
        if not rewinds:
            return
        self.metrics.rebuilt_partitions.inc(len(rewinds))
        for key, (offset, upto) in rewinds.items():
            self.metrics.reread.inc(upto - offset)
            log.warning(
                "redis holds %s[%d] up to offset %d, not %d: reading it again",
                key[0],
                key[1],
                offset,
                upto,
            )
            self.processor.watermarks.pop(key, None)
            tp = self._tp(key)
            self.positions[(tp.topic, tp.partition)] = offset
            self.read_from[key] = offset
        mine = {self._tp(key): o for key, (o, _) in rewinds.items() if key in going_on}
        others = {self._tp(key): o for key, (o, _) in rewinds.items() if key not in going_on}
        if others:
            await cast(Any, self.app.consumer).rewind(others)
        if mine:
            raise Rewind(mine)

    async def check_quiet(self) -> None:
        """Check the assigned partitions no fetch has come to check (a quiet one)."""
        if not self.checking.locked() and any(
            self.key(tp) not in self.checked for tp in self.assigned()
        ):
            async with self.checking:
                await self.check({})

    def both_checked(self) -> list[int]:
        """The assigned partitions whose sessions and hits are both checked, in order."""
        return sorted(
            p
            for p in self.mine()
            if ("sessions", p) in self.checked and ("hits", p) in self.checked
        )

    def forget(self, revoked: Any) -> None:
        """Forget what this worker knew of partitions it gave up."""
        for tp in revoked:
            self.positions.pop((tp.topic, tp.partition), None)
            if tp.topic in self.inputs:
                key = self.key(tp)
                self.checked.discard(key)
                self.read_from.pop(key, None)
                self.processor.store.expected.pop(key, None)
                self.processor.cache.drop_partitions([tp.partition])
        cast(Any, self.app.consumer).forget(set(revoked))
