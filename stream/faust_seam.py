"""The seam between the worker and faust-streaming / aiokafka: every private part of
either that the project overrides, calls or sets is here, and nowhere else.

Faust's Kafka consumer hands the worker each fetch whole. Faust delivers a record to an
agent through a chain of per-event steps: a message object, the conductor, a channel's
queue, the stream's bookkeeping, the ack. On this machine that chain alone caps a
process at about 13,000 events/s, before any work; the Kafka client under it reads the
same topics at more than 300,000 events/s. The worker needs batches, not events, so
here Faust's fetcher hands each fetch (up to ``broker_max_poll_records`` records,
grouped by partition) to one coroutine, the app's ``batch_handler``, and waits for it.

Everything else stays Faust's: the consumer group, the rebalances, the thread the Kafka
client runs in, pausing, the periodic commit and the commit before a rebalance or a
stop. Only what is committed is decided here: a partition's offset moves past a fetch
once the handler has returned for it (the records are processed and their results on
Kafka), never before. A handler that raises leaves the fetch uncommitted.

A batch is never cut short: the handler runs shielded from the fetcher's cancellation
(Faust cancels the fetcher when the worker stops), and ``wait_empty``, which Faust
awaits before its last commit on a rebalance or a stop, waits for it to finish.

Checked against faust-streaming 0.15.3 and aiokafka 0.14.0 (``CHECKED``; the lock
files pin them). What it relies on, each checked by ``tests/stream/test_faust_seam.py``:

- overridden: ``faust.App._new_transport``; ``Transport.Consumer``;
  ``Consumer._new_consumer_thread``, ``_drain_messages`` (the fetch loop),
  ``_filter_tps_with_pending_acks`` and ``_new_offset`` (what Faust's commit takes),
  ``wait_empty``, ``perform_seek``; ``AIOKafkaConsumerThread._create_worker_consumer``;
  the monitor's ``on_message_in``, ``on_stream_event_in``, ``on_stream_event_out``,
  ``on_message_out``;
- called or read: ``Consumer._wait_next_records``, ``_read_offset``, ``_stopped``,
  ``_thread`` and the fetcher's ``_stopped``; ``AIOKafkaConsumerThread.seek_wait``,
  ``call_thread`` and ``_ensure_consumer``; ``Producer._ensure_producer``;
  ``Monitor.stream_inbound_time`` (Faust's stalled-stream check reads it);
- set on aiokafka's ``AIOKafkaConsumer`` after it is made: ``_fetch_max_wait_ms`` and
  ``_fetch_min_bytes`` (read when its fetcher starts).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, cast

import faust
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

log = logging.getLogger(__name__)

# The releases this module was checked against (see the docstring).
CHECKED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}

# A fetch: the consumed records (aiokafka's ConsumerRecord) by topic partition, in order.
Fetch = Mapping[TP, list[Any]]
Handler = Callable[[Fetch], Awaitable[None]]


class Rewind(Exception):  # noqa: N818 - an instruction to the consumer, not an error
    """Raised by the handler: read these partitions again from these offsets.

    Nothing of the fetch in hand counts as handled; a partition of the fetch that is
    not named is read again from the fetch's first record.
    """

    def __init__(self, offsets: Mapping[TP, int]) -> None:
        super().__init__(f"rewind {len(offsets)} partitions")
        self.offsets = dict(offsets)


class BatchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, its Kafka client fetching as the app says.

    Faust asks the broker to answer a fetch as soon as it has one byte, or after 1.5 s.
    The client keeps one fetch per broker in flight, and none while records it fetched
    are still waiting to be handed out. So at a steady rate, records that reach the
    broker after the fetch's early answer wait there for the whole batch in hand, and
    then for the next one: most of an event's latency at 1,000 events/s. With
    ``fetch_min_bytes`` above what arrives in ``fetch_max_wait_ms``, the broker answers
    after that wait with everything that came meanwhile; with a backlog it answers at
    once, as before.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        client = super()._create_worker_consumer(transport)
        app = cast(BatchApp, self.app)
        # aiokafka builds its fetcher from these at start.
        client._fetch_max_wait_ms = app.fetch_max_wait_ms
        client._fetch_min_bytes = app.fetch_min_bytes
        return client


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with whole fetches handed to ``app.batch_handler``."""

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.done: dict[TP, int] = {}  # next offset to commit: everything before is handled
        self.in_flight: asyncio.Future[None] | None = None

    async def _drain_messages(self, fetcher: Any) -> None:
        """Fetch until stopped; hand each fetch to the handler and wait for it."""
        handler = cast(Handler, cast(Any, self.app).batch_handler)
        consumer_stopping = self._stopped.is_set
        fetcher_stopping = fetcher._stopped.is_set
        read_offset = self._read_offset
        monitor = self.app.monitor
        while not (consumer_stopping() or fetcher_stopping()):
            records, active = await self._wait_next_records(1.0)
            await asyncio.sleep(0)
            if not records or self.should_stop:
                continue
            if not self.flow_active:
                # A rebalance began meanwhile. The client's positions are past these
                # records: move them back to the committed offsets, so the records are
                # read again by whichever worker is assigned their partitions.
                try:
                    await self.perform_seek()
                except Exception as exc:  # noqa: BLE001 - the assignment seeks again anyway
                    log.warning("seeking back to the committed offsets failed: %r", exc)
                continue
            fetch: dict[TP, list[Any]] = {}
            now = time.monotonic()
            for tp, recs in records.items():
                if not recs or (active is not None and tp not in active):
                    continue
                last = read_offset[tp]
                if last is not None and recs[0].offset < last:
                    recs = [r for r in recs if r.offset >= last]  # already handed over
                    if not recs:
                        continue
                fetch[tp] = recs
                read_offset[tp] = recs[-1].offset
                monitor.stream_inbound_time[tp] = now  # Faust's stalled-partition check reads it
            if fetch:
                task = asyncio.ensure_future(self._handle(handler, fetch))
                self.in_flight = task
                await asyncio.shield(task)

    async def _handle(self, handler: Handler, fetch: Fetch) -> None:
        try:
            await handler(fetch)
        except Rewind as rewind:
            # Nothing of the fetch counts as handled: its partitions are read again.
            await self.rewind({tp: recs[0].offset for tp, recs in fetch.items()} | rewind.offsets)
            return
        for tp, recs in fetch.items():
            self.done[tp] = recs[-1].offset + 1

    async def rewind(self, offsets: Mapping[TP, int]) -> None:
        """Move the client's positions back, in its own thread; records it had fetched
        past them are dropped and read again."""
        if not offsets:
            return
        log.warning(
            "reading input again from %s",
            {f"{tp.topic}[{tp.partition}]": o for tp, o in offsets.items()},
        )
        try:
            await cast(Any, self)._thread.seek_wait(dict(offsets))
        except Exception as exc:  # noqa: BLE001 - a partition revoked meanwhile: its new owner checks it
            log.warning("seeking back failed: %r", exc)

    async def wait_empty(self) -> None:
        """Let the batch in hand finish, then commit as Faust does."""
        task = self.in_flight
        if task is not None and not task.done():
            log.info("waiting for the batch in hand before committing")
            await asyncio.wait({task})
        await super().wait_empty()

    async def perform_seek(self) -> None:
        """Seek to the committed offsets (on every assignment), then tell the app."""
        await super().perform_seek()
        on_seek = cast(Any, self.app).on_seek
        if on_seek is not None:
            on_seek()

    def forget(self, tps: set[TP]) -> None:
        """Drop the handled offsets of partitions this worker no longer owns."""
        for tp in tps:
            self.done.pop(tp, None)

    # Faust's commit reads its per-message acks; the worker's are per fetch.
    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        return (
            tp for tp in list(self.done) if topics is None or tp in topics or tp.topic in topics
        )

    def _new_offset(self, tp: TP) -> int | None:
        return self.done.get(tp)


class BatchTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with the batch consumer."""

    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A Faust app whose consumer hands whole fetches to ``batch_handler``."""

    batch_handler: Handler | None = None
    # Called after the consumer has moved to the committed offsets (an assignment).
    on_seek: Callable[[], None] | None = None
    fetch_max_wait_ms = 1500  # Faust's own
    fetch_min_bytes = 1

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)


def kafka_producer(app: faust.App) -> Any:
    """The aiokafka producer under the app's Faust producer (made if not yet)."""
    return cast(Any, app.producer)._ensure_producer()


async def fetching(app: faust.App, tps: list[Any], on: bool) -> list[Any]:
    """Pause (on=False) or resume fetching partitions, in the consumer's own thread.

    Returns the partitions it did: a rebalance under way in that thread may have taken
    some from the client since the assignment was read by the caller.
    """
    thread = cast(Any, app.consumer)._thread  # Faust runs aiokafka in a thread
    client = thread._ensure_consumer()
    parts = [TopicPartition(tp.topic, tp.partition) for tp in tps]
    done = await thread.call_thread(set_fetching, client, parts, on)
    return [tp for tp, part in zip(tps, parts, strict=True) if part in done]


def set_fetching(client: Any, parts: list[TopicPartition], on: bool) -> set[TopicPartition]:
    """Pause or resume those of ``parts`` the Kafka client has now; return them.

    Runs in the client's thread, where its rebalances run: the assignment read here is
    the one the call acts on. (The client raises for a partition it does not have.)
    """
    assigned = client.assignment()
    mine = [tp for tp in parts if tp in assigned]
    if mine:
        (client.resume if on else client.pause)(*mine)
    return set(mine)


class LeanMonitor(faust.Monitor):
    """Faust's monitor without its bookkeeping of every message and stream event.

    The default monitor counts each message and event in dictionaries and times each
    one, four calls per event, for statistics this project does not read (its web
    server is off; the worker's own Prometheus metrics count what matters). Only the
    time a stream last took an event is kept: Faust's consumer reads it to warn about
    a stream that stopped processing.
    """

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        self.stream_inbound_time[tp] = time.monotonic()

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None
