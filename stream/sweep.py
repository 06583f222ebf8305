"""The close sweep: idle sessions of this worker's partitions closed, in rounds."""

from __future__ import annotations

import logging

from stream.alignment import Alignment
from stream.exits import fatal
from stream.metrics import ExitLog, WorkerMetrics
from stream.partitions import Partitions
from stream.processor import Processor
from stream.publisher import Publisher
from stream.settings import StreamSettings
from stream.state import RedisLost

log = logging.getLogger(__name__)

# Most sessions closed in one round of the close sweep (one publish).
CLOSE_ROUND = 500


class CloseSweep:
    """Closes the sessions idle for ``session_gap_s`` of event time, and publishes it."""

    def __init__(
        self,
        settings: StreamSettings,
        processor: Processor,
        partitions: Partitions,
        alignment: Alignment,
        publisher: Publisher,
        metrics: WorkerMetrics,
        exits: ExitLog,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.partitions = partitions
        self.alignment = alignment
        self.publisher = publisher
        self.metrics = metrics
        self.exits = exits

    async def close_idle(self) -> int:
        """Close the idle sessions of this worker's partitions; return how many.

        All the partitions are swept together, in rounds of up to ``CLOSE_ROUND``
        sessions. A round holds its sessions (not the others) for three Redis round
        trips (the due sessions; their states and stored copies, read at once; the
        close) and the publish; one more round trip after it takes the sessions out of
        the open sets.
        """
        closed = 0
        gap_ms = self.settings.session_gap_s * 1000.0
        proc = self.processor
        # A quiet partition is checked here, since no fetch of it comes to check it.
        await self.partitions.check_quiet()
        try:
            with fatal(self.exits, "closing sessions"):
                # Only partitions whose Redis state is checked: a session must not be
                # closed on state that Redis lost part of.
                partitions = self.partitions.both_checked()
                behind = {p: await self.alignment.behind(p) for p in partitions}
                upto = await proc.close_horizon(behind, gap_ms)
                while upto:
                    # The sessions being closed are held until their final events are
                    # published: a late hit for one of them waits, so its score and
                    # outcome come after the close's. Hits of other sessions go on.
                    async with proc.closing(upto, CLOSE_ROUND) as out:
                        if not out.closed:
                            break
                        await self.publisher.publish(out)
                    await proc.finish_close(out.closed)
                    n = sum(len(sids) for sids in out.closed.values())
                    closed += n
                    self.metrics.closed.inc(n)
                open_total = await proc.store.open_count(partitions)
        except RedisLost as exc:
            log.error("%s: closes wait until Redis is rebuilt", exc)
            self.metrics.redis_losses.inc()
            proc.forget_state()
            self.partitions.checked.clear()
            return closed
        self.metrics.open_sessions.set(open_total)
        return closed
