"""Processing of micro-batches of session and hit events.

The pipeline hands over batches of raw Kafka records; the processor parses them, keeps
the state in Redis, scores with the model and returns what to publish. A bad record
becomes a dead letter with its reason; it never stops the batch. Order of effects per
batch: Redis first (one atomic script call), then Kafka, then the offsets may be
committed. After a crash the batch is delivered again: sessions and hits already
applied are recognised and their stored scores published again as identical copies.

The work is done by one part per job, each in its own module:

- ``stream/starts.py``: session rows, each stored once with its start score;
- ``stream/hit_batches.py``: hits, each applied once to its session and scored;
- ``stream/parking.py``: hits that come before their session's start score is out;
- ``stream/closing.py``: idle sessions closed with a final score and outcome;
- ``stream/clock.py``: event time, from each input partition's high-water marks;
- ``stream/records.py``: records in, outputs and dead letters out, the shared context.

``Processor`` builds them around one ``Context`` and is the pipeline's way in.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator, Awaitable, Collection, Mapping

from artifact import ConversionModel
from stream.cache import SessionCache
from stream.clock import IDLE_MS, EventClock, Marks
from stream.closing import Closer
from stream.gate import SessionGate
from stream.hit_batches import HitBatches, HitsBatch, HitsRun
from stream.parking import Parking
from stream.records import Context, Output, Record, dead_letter
from stream.starts import SessionsBatch, SessionsRun, SessionStarts
from stream.state import Offsets, RedisStore

__all__ = [
    "IDLE_MS",
    "HitsBatch",
    "HitsRun",
    "Output",
    "Processor",
    "Record",
    "SessionsBatch",
    "SessionsRun",
    "dead_letter",
]


class Processor:
    """Turns batches of records into state, scores and dead letters."""

    def __init__(
        self,
        model: ConversionModel,
        store: RedisStore,
        hits_topic: str = "ga.hits",
        cache_sessions: int = 50_000,
        cache_age_s: float = 600.0,
        reasons: bool = True,
    ) -> None:
        self.ctx = Context(
            model=model,
            store=store,
            cache=SessionCache(cache_sessions, cache_age_s),
            gate=SessionGate(),
            reasons=reasons,
        )
        self.clock = EventClock(store)
        self.parking = Parking(self.ctx, hits_topic)
        self.session_starts = SessionStarts(self.ctx, self.clock, self.parking)
        self.hit_batches = HitBatches(self.ctx, self.clock, self.parking)
        self.closer = Closer(self.ctx, self.parking)

    @property
    def model(self) -> ConversionModel:
        """The model scoring now; setting it swaps it in for every part."""
        return self.ctx.model

    @model.setter
    def model(self, model: ConversionModel) -> None:
        self.ctx.model = model

    @property
    def store(self) -> RedisStore:
        """The session store in Redis."""
        return self.ctx.store

    @property
    def cache(self) -> SessionCache:
        """What Redis holds of this worker's sessions."""
        return self.ctx.cache

    @property
    def gate(self) -> SessionGate:
        """The sessions a hits run or a close round holds."""
        return self.ctx.gate

    @property
    def watermarks(self) -> Marks:
        """Event-time high-water marks by (input kind, partition) (``EventClock``)."""
        return self.clock.watermarks

    @property
    def releasing(self) -> collections.Counter[str]:
        """Sessions whose parked hits are being applied (``Parking``)."""
        return self.parking.releasing

    def forget_state(self) -> None:
        """Forget what this worker knew of the sessions in Redis: Redis lost writes."""
        self.ctx.cache.clear()
        self.ctx.store.layout_recorded = False  # it may have lost that too
        self.parking.forget_starting()

    # Session rows (stream/starts.py).

    async def sessions(self, records: list[Record]) -> Output:
        """Process session-start records: one batch, read, computed and written."""
        run = SessionsRun()
        batch = await self.sessions_read(self.sessions_parse(records))
        batch = await self.sessions_compute(batch, run)
        await (await self.sessions_write(batch, run))
        return batch.out

    def sessions_parse(self, records: list[Record]) -> SessionsBatch:
        """Parse and score a batch of session rows (``SessionStarts.parse``)."""
        return self.session_starts.parse(records)

    async def sessions_read(self, batch: SessionsBatch) -> SessionsBatch:
        """The read step of a sessions batch (``SessionStarts.read``)."""
        return await self.session_starts.read(batch)

    async def sessions_compute(self, batch: SessionsBatch, run: SessionsRun) -> SessionsBatch:
        """Make a sessions batch's start scores and writes (``SessionStarts.compute``)."""
        return await self.session_starts.compute(batch, run)

    async def sessions_write(self, batch: SessionsBatch, run: SessionsRun) -> Awaitable[None]:
        """Send a sessions batch's write (``SessionStarts.write``)."""
        return await self.session_starts.write(batch, run)

    # Parked hits (stream/parking.py).

    def releasing_sessions(self, sids: Collection[str]) -> contextlib.AbstractContextManager[None]:
        """Keep the close sweep off sessions being released (``Parking``)."""
        return self.parking.releasing_sessions(sids)

    async def release(self, sids: Mapping[str, int]) -> list[Record]:
        """Release sessions whose start score is on Kafka; return their parked hits."""
        return await self.parking.release(sids)

    async def forget_pending(self, sids: Mapping[str, int]) -> None:
        """Drop parked hits once applied and published."""
        await self.parking.forget_pending(sids)

    # Hits (stream/hit_batches.py).

    async def hits(self, records: list[Record]) -> Output:
        """Process hit records (see ``hits_batch``)."""
        async with self.hits_batch(records) as out:
            return out

    @contextlib.asynccontextmanager
    async def hits_batch(self, records: list[Record]) -> AsyncIterator[Output]:
        """Process hit records; their sessions stay held in the gate until the block ends.

        The worker publishes the output inside the block: a close round of one of these
        sessions waits meanwhile, and a batch waits for a round closing one of them.
        """
        async with self.hits_run() as run:
            work = await self.hits_compute(await self.hits_read(self.hits_parse(records), run), run)
            await (await self.hits_write(work, run))
            yield work.out

    def hits_run(self) -> contextlib.AbstractAsyncContextManager[HitsRun]:
        """A run of hits batches (``HitBatches.run``)."""
        return self.hit_batches.run()

    def hits_parse(self, records: list[Record]) -> HitsBatch:
        """Parse a batch of hit records (``HitBatches.parse``)."""
        return self.hit_batches.parse(records)

    async def hits_read(self, batch: HitsBatch, run: HitsRun) -> HitsBatch:
        """Hold a hits batch's sessions and send their read (``HitBatches.read``)."""
        return await self.hit_batches.read(batch, run)

    async def hits_compute(self, batch: HitsBatch, run: HitsRun) -> HitsBatch:
        """Apply and score a read hits batch (``HitBatches.compute``)."""
        return await self.hit_batches.compute(batch, run)

    async def hits_write(
        self, batch: HitsBatch, run: HitsRun, offsets: Offsets | None = None
    ) -> Awaitable[None]:
        """Send a hits batch's write (``HitBatches.write``)."""
        return await self.hit_batches.write(batch, run, offsets)

    # Event time and closes (stream/clock.py, stream/closing.py).

    async def event_time(
        self, partition: int, behind: Collection[str] = frozenset()
    ) -> float | None:
        """A partition's event time now in ms (``EventClock.event_time``)."""
        return await self.clock.event_time(partition, behind)

    async def close_horizon(
        self, behind: Mapping[int, Collection[str]], gap_ms: float
    ) -> dict[int, float]:
        """By partition, the last-event time before which a session is idle."""
        return await self.clock.close_horizon(behind, gap_ms)

    async def close_due(self, upto: Mapping[int, float], limit: int = 1000) -> Output:
        """Close the idle sessions before ``upto`` (``Closer.close_due``)."""
        return await self.closer.close_due(upto, limit)

    def closing(
        self, upto: Mapping[int, float], limit: int = 1000
    ) -> contextlib.AbstractAsyncContextManager[Output]:
        """A close round, its sessions held until the block ends (``Closer.closing``)."""
        return self.closer.closing(upto, limit)

    async def finish_close(self, closed: Mapping[int, list[str]]) -> None:
        """Take closed sessions out of the open sets (``Closer.finish``)."""
        await self.closer.finish(closed)
