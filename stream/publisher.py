"""Publishing a batch's output: scores, outcomes, leads and dead letters, on Kafka, counted."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from aiokafka.partitioner import murmur2

from contracts import limits, topics
from contracts.scores import TIER_NAMES
from stream.faust_seam import kafka_producer
from stream.metrics import WorkerMetrics
from stream.records import Output, Record, dead_letter
from stream.settings import StreamSettings

log = logging.getLogger(__name__)

# Largest record batch the producer builds (Kafka's own limit is 1 MB).
PRODUCER_BATCH_BYTES = 256 * 1024
# The murmur2 hashes of recent message keys are kept up to this many bytes (an entry
# costs its key and about KEY_ENTRY_BYTES of dict and object overhead).
KEY_CACHE_BYTES = 32 * 1024 * 1024
KEY_ENTRY_BYTES = 120

# Outputs queued in the producer and not yet known to be delivered: the delivery
# futures, the output and its source topic.
Pending = list[tuple[list[Any], Output, str | None]]


class Publisher:
    """Puts outputs on Kafka, in order, and counts them in the metrics once delivered."""

    def __init__(self, app: Any, settings: StreamSettings, metrics: WorkerMetrics) -> None:
        self.app = app
        self.metrics = metrics
        prefix = settings.topic_prefix
        self.scores_name = topics.topic_name(topics.SCORES, prefix)
        self.outcomes_name = topics.topic_name(topics.OUTCOMES, prefix)
        self.leads_name = topics.topic_name(topics.LEADS, prefix)
        self.dead_name = topics.topic_name(topics.DEAD_LETTERS, prefix)
        self.partition_counts: dict[str, tuple[int, float]] = {}  # topic -> (count, when)
        self._spread = 0  # round-robin partition of keyless messages (dead letters)
        self.key_hashes: dict[bytes, int] = {}  # murmur2 of recent keys (session ids)
        self.key_bytes = 0  # what key_hashes holds, roughly, in bytes

    async def publish(
        self, out: Output, source: str | None = None, pending: Pending | None = None
    ) -> None:
        """Publish a batch's output.

        ``source`` is the input topic the batch was read from, for the duplicates count.
        With ``pending``, the output is only queued in the producer (in order, so a
        later batch's events still come after it) and its delivery is added there, to
        be awaited with ``settle`` before the fetch counts as handled.
        """
        futures = await self.send_all(
            [(self.scores_name, sid.encode(), payload) for sid, payload in out.scores]
            + [(self.outcomes_name, sid.encode(), payload) for sid, payload in out.outcomes]
            + [(self.leads_name, sid.encode(), payload) for sid, payload in out.leads]
            + [(self.dead_name, None, payload) for _, payload in out.dead_letters],
            wait=pending is None,
        )
        if pending is None:
            self.count(out, source)
        else:
            pending.append((futures, out, source))

    async def settle(self, pending: Pending) -> None:
        """Wait until every queued output in ``pending`` is on Kafka, then count it."""
        while pending:
            futures, out, source = pending.pop(0)
            await asyncio.gather(*futures)
            self.count(out, source)

    async def send_all(
        self, messages: Sequence[tuple[str, bytes | None, bytes]], wait: bool = True
    ) -> list[Any]:
        """Publish messages and wait until Kafka has them all (or, with ``wait`` False,
        return the futures of their delivery: they are in the producer's queue, in order).

        Messages go out as record batches built here, one run per topic partition, the
        partition chosen as the default partitioner would (murmur2 of the key); this
        costs a fraction of one ``send`` call per message.
        """
        if not messages:
            return []
        producer = kafka_producer(self.app)
        runs: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
        for topic, key, value in self._fitting(messages):
            n = await self._partitions(producer, topic)
            if key is None:
                p = self._spread % n
                self._spread += 1
            else:
                p = self._hash(key) % n
            runs.setdefault((topic, p), []).append((key, value))
        # A batch built here is complete: closing it tells the producer not to hold it
        # for its linger time (an open batch waits for more messages).
        futures = []
        for (topic, p), items in runs.items():
            batch = producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    futures.append(await producer.send_batch(batch, topic, partition=p))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            batch.close()
            futures.append(await producer.send_batch(batch, topic, partition=p))
        if wait:
            await asyncio.gather(*futures)
            return []
        return futures

    def _hash(self, key: bytes) -> int:
        """The default partitioner's hash of a key, remembered for the next time."""
        h = self.key_hashes.get(key)
        if h is None:
            if self.key_bytes > KEY_CACHE_BYTES:
                self.key_hashes.clear()
                self.key_bytes = 0
            h = self.key_hashes[key] = murmur2(key) & 0x7FFFFFFF
            self.key_bytes += len(key) + KEY_ENTRY_BYTES
        return h

    def _fitting(
        self, messages: Sequence[tuple[str, bytes | None, bytes]]
    ) -> Iterator[tuple[str, bytes | None, bytes]]:
        """The messages, each one too large for Kafka replaced by a dead letter about it.

        The processor bounds what it makes, so this is the last guard: a batch must
        never be refused by the broker for one of its messages.
        """
        for topic, key, value in messages:
            if len(value) + len(key or b"") <= limits.OUTPUT_MAX_BYTES:
                yield topic, key, value
                continue
            error = f"{len(value)}-byte event for {topic} is over {limits.OUTPUT_MAX_BYTES}"
            log.error("not published: %s", error)
            record = Record(value, topic, -1, -1, key)
            self.metrics.refused.labels("publish", "too_large").inc()
            self.metrics.dead_letters.labels("publish").inc()
            yield self.dead_name, None, dead_letter(record, "publish", error, "too_large")

    async def _partitions(self, producer: Any, topic: str) -> int:
        """Return a topic's partition count, looked up again after a minute."""
        cached = self.partition_counts.get(topic)
        now = time.monotonic()
        if cached is not None and now - cached[1] < 60.0:
            return cached[0]
        count = len(await producer.partitions_for(topic))
        self.partition_counts[topic] = (count, now)
        return count

    def count(self, out: Output, source: str | None = None) -> None:
        """Add a published output to the metrics."""
        m = self.metrics
        if out.duplicates and source is not None:
            m.duplicates.labels(source).inc(out.duplicates)
        for trigger, n in out.triggers.items():
            m.scores_out.labels(trigger).inc(n)
        for _, payload in out.outcomes:
            m.outcomes_out.labels(
                "converted" if b'"outcome":"converted"' in payload else "not_converted"
            ).inc()
        for tier, n in out.new_leads.items():
            m.leads.labels(tier).inc(n)
        if out.unexplained:
            m.unexplained.inc(out.unexplained)
        for code, n in enumerate(out.tiers):
            if n:
                m.tiers.labels(TIER_NAMES[code]).inc(n)
        for stage, _ in out.dead_letters:
            m.dead_letters.labels(stage).inc()
        for (stage, kind), n in out.refusals.items():
            m.refused.labels(stage, kind).inc(n)
        if out.parked:
            m.parked.inc(out.parked)
        if out.out_of_order:
            m.out_of_order.inc(out.out_of_order)
        if out.late:
            m.late.inc(out.late)
        now = time.time() * 1000.0
        for ts in out.event_ts_ms:
            m.end_to_end.observe(max(0.0, now - ts) / 1000.0)
