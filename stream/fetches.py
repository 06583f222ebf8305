"""A fetch cut into micro-batches and run through the processor, Redis's work overlapped.

A fetch's sessions go first, then its hits: the hits parked for the sessions it
released, then its own. Each topic's records are cut into batches of up to
``batch_max`` taken from all its partitions in turn (``interleave``). Within a run of
batches the next batch's read is sent before a batch is computed, and a batch's write
is sent once it is computed, so Redis works while the worker computes. Each batch's
output is queued in the producer once its write has landed; the fetch is handled once
all of it is on Kafka, and its offsets go into Redis with its last write.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol, TypeVar

from contracts import topics
from stream.alignment import Alignment
from stream.exits import fatal
from stream.faust_seam import Fetch
from stream.metrics import ExitLog, WorkerMetrics
from stream.processor import Output, Processor, Record, SessionsRun
from stream.publisher import Pending, Publisher
from stream.settings import StreamSettings


class _Batch(Protocol):
    """A sessions or hits batch on its way; the pipeline publishes its output."""

    out: Output


B = TypeVar("B", bound=_Batch)


class FetchRunner:
    """Runs a checked fetch through the processor and publishes what it makes."""

    def __init__(
        self,
        settings: StreamSettings,
        processor: Processor,
        publisher: Publisher,
        alignment: Alignment,
        metrics: WorkerMetrics,
        exits: ExitLog,
        positions: dict[tuple[str, int], int],
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.publisher = publisher
        self.alignment = alignment
        self.metrics = metrics
        self.exits = exits
        self.positions = positions  # next offset to process, by (topic, partition)
        self.inputs = topics.InputTopics(settings.topic_prefix)

    async def process(self, fetch: Fetch) -> None:
        """Process a checked fetch; its offsets go into Redis with its last write."""
        sessions: list[list[Record]] = []
        hits: list[list[Record]] = []
        positions = self.positions
        offsets: dict[tuple[str, int], int] = {}
        for tp, recs in fetch.items():
            kind = self.inputs.kind(tp.topic)
            into = sessions if kind == "sessions" else hits
            into.append(
                [
                    Record(r.value, r.topic, r.partition, r.offset, r.key, _stamp(r.timestamp))
                    for r in recs
                ]
            )
            positions[(tp.topic, tp.partition)] = recs[-1].offset + 1
            offsets[(kind, tp.partition)] = recs[-1].offset + 1
        # Each batch's output is queued in the producer, and the next batch goes on while
        # Kafka takes it; the fetch is handled once all of it is on Kafka.
        pending: Pending = []
        size = self.settings.batch_max
        events_in = self.metrics.events_in
        events_in.labels(self.inputs.sessions).inc(sum(len(run) for run in sessions))
        released, parked = await self.run_sessions(list(interleave(sessions, size)), pending)
        events_in.labels(self.inputs.hits).inc(sum(len(run) for run in hits))
        # The close sweep leaves the released sessions open until their parked hits are
        # in. Those hits go first, before the fetch's own.
        proc = self.processor
        marks = proc.watermarks
        before = {run[0].partition: marks.get(("hits", run[0].partition)) for run in hits}
        with proc.releasing_sessions(released):
            batches = [parked[i : i + size] for i in range(0, len(parked), size)]
            batches += list(interleave(hits, size))
            # The fetch's offsets go with its last write: after the release, its parked
            # hits and every state it changed (see stream/recovery.py).
            await self.run_hits(batches, pending, offsets)
            if not batches:
                with fatal(self.exits, "storing a fetch's offsets"):
                    await proc.store.write([], [], offsets=offsets)
            for partition, mark in before.items():
                after = marks.get(("hits", partition))
                if mark is not None and after is not None:
                    self.alignment.hits_span[partition] = after[0] - mark[0]
            with fatal(self.exits, "publishing a fetch's output"):
                await self.publisher.settle(pending)
                if parked:
                    # Their scores are on Kafka: they are applied for good.
                    await proc.forget_pending(
                        {(r.key or b"").decode(): r.partition for r in parked}
                    )

    async def run_sessions(
        self, batches: list[list[Record]], pending: Pending
    ) -> tuple[dict[str, int], list[Record]]:
        """Process a fetch's session batches, then release their sessions to their hits.

        As for hits (``run_hits``), the next batch's read is sent before a batch is
        computed and a batch's write is sent once it is computed; a batch's output is
        queued once its write has landed, in order. Once every start score is on Kafka,
        the sessions are released in one call: only then may their hits be applied.
        Returns the sessions released and the hits parked for them, which the caller
        applies and then drops (``forget_pending``) once their scores are on Kafka.
        """
        if not batches:
            return {}, []
        proc = self.processor
        run = SessionsRun()
        with fatal(self.exits, "a sessions batch"):
            await self._overlapped(
                "sessions",
                batches,
                lambda records: proc.sessions_read(proc.sessions_parse(records)),
                lambda batch: proc.sessions_compute(batch, run),
                lambda batch, _: proc.sessions_write(batch, run),
                pending,
            )
            released = dict(run.released)
            if not released:
                return {}, []
            await self.publisher.settle(pending)
            return released, await proc.release(released)

    async def run_hits(
        self,
        batches: list[list[Record]],
        pending: Pending,
        offsets: dict[tuple[str, int], int] | None = None,
    ) -> None:
        """Process a fetch's hits batches, Redis's work on each overlapped with the worker's.

        A close round of one of their sessions is waited for (the gate), so a late hit's
        score and outcome come after the close's. ``HitsRun`` keeps the states right
        while a batch's read comes before the writes of the batches just ahead of it.
        """
        if not batches:
            return
        proc = self.processor
        async with proc.hits_run() as run:
            with fatal(self.exits, "a hits batch"):
                await self._overlapped(
                    "hits",
                    batches,
                    lambda records: proc.hits_read(proc.hits_parse(records), run),
                    lambda batch: proc.hits_compute(batch, run),
                    lambda batch, last: proc.hits_write(batch, run, offsets if last else None),
                    pending,
                )

    async def _overlapped(
        self,
        kind: str,
        batches: list[list[Record]],
        read: Callable[[list[Record]], Awaitable[B]],
        compute: Callable[[B], Awaitable[B]],
        write: Callable[[B, bool], Awaitable[Awaitable[None]]],
        pending: Pending,
    ) -> None:
        """Run batches with Redis's work on each overlapped with the worker's.

        The next batch's read is sent before a batch is computed, and a batch's write
        is sent once it is computed: Redis runs them while the worker computes the next
        batch, whose read is back by then. A batch's output is queued once its write
        has landed, in order. ``write`` is told whether its batch is the last.
        """
        nxt = await read(batches[0])
        writing: tuple[Awaitable[None], Output, float] | None = None
        for k, records in enumerate(batches):
            started = time.perf_counter()
            self.metrics.batch_size.labels(kind).observe(len(records))
            reading = nxt
            if k + 1 < len(batches):
                nxt = await read(batches[k + 1])
            batch = await compute(reading)
            if writing is not None:
                await self._land(*writing, kind, pending)
            writing = (await write(batch, k + 1 == len(batches)), batch.out, started)
            await self.alignment.align()
        if writing is not None:
            await self._land(*writing, kind, pending)

    async def _land(
        self, landed: Awaitable[None], out: Output, started: float, kind: str, pending: Pending
    ) -> None:
        """Wait for a batch's write to land, then queue its output; time the batch."""
        await landed
        source = self.inputs.name(kind)
        await self.publisher.publish(out, source, pending)
        self.metrics.batch_seconds.labels(kind).observe(time.perf_counter() - started)


def interleave(runs: list[list[Record]], size: int) -> Iterator[list[Record]]:
    """Batches of up to ``size`` records, shared equally among the runs (partitions).

    Each run keeps its order; a batch is full while records are left, and a run with
    fewer records than its share leaves the rest of the batch to the others.
    """
    at = [0] * len(runs)
    while True:
        batch: list[Record] = []
        live = [k for k, run in enumerate(runs) if at[k] < len(run)]
        while live and len(batch) < size:
            share = -(-(size - len(batch)) // len(live))  # rounded up
            for k in live:
                take = runs[k][at[k] : at[k] + min(share, size - len(batch))]
                at[k] += len(take)
                batch.extend(take)
            live = [k for k in live if at[k] < len(runs[k])]
        if not batch:
            return
        yield batch


def _stamp(timestamp: int | None) -> float | None:
    """A record's Kafka timestamp in ms, None if it has none."""
    return None if timestamp is None or timestamp < 0 else float(timestamp)
