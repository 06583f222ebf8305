"""Redis rebuilt from the input topics when it lost writes.

Kafka is the record; Redis is a cache that can forget: a restart without persistence
loses everything, AOF's ``everysec`` its last second, a failover to a replica what the
replica had not received, an operator's FLUSHALL whatever it flushed. The session state
is a function of the input records, so the worker reads them again.

Redis keeps, per input partition, the offset up to which its state reflects the input
(``contracts.keys.Layout.applied``), raised in the same script call as the state of the
fetch's last batch. Losses in Redis take a suffix of its writes (AOF and replication
both keep the order of writes), so a Redis that lost writes holds a lower offset, or
none. The worker checks before it writes anything:

- when it starts and whenever partitions are assigned (the first fetch of a partition
  is checked before it is processed; a quiet partition when the close sweep needs it);
- on every write: each script call carries the offsets this worker knows Redis holds
  (the fence) and writes nothing if Redis holds less. That covers a Redis that restarts
  under a running worker, whichever call reconnects to it first.

Where Redis is behind, the partition is read again from Redis's offset; where Redis
has nothing, from the first record within ``SCORER_SESSION_TTL_S`` of now by the
records' Kafka timestamps (older state would have expired anyway). The records are
applied again through the usual path, which is idempotent: sessions and hits still in
Redis are recognised, and those it lost are applied and scored again, to the same
probabilities and score ids.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from stream.kafka import client_options
from stream.settings import StreamSettings
from stream.state import RedisStore

Key = tuple[str, int]  # (input kind: "sessions" or "hits", partition)


class Recovery:
    """Compares Redis's applied offsets with the worker's place in its input partitions."""

    def __init__(
        self, settings: StreamSettings, store: RedisStore, topics: Mapping[str, str]
    ) -> None:
        self.settings = settings
        self.store = store
        self.topics = topics  # input kind -> topic name

    async def check(self, going_on: Mapping[Key, int | None]) -> dict[Key, tuple[int, int]]:
        """Return where Redis is behind: (the offset to read again from, the worker's place).

        ``going_on`` maps each of the worker's input partitions to the offset it would
        process next; None where this worker has not read the partition yet, and the
        consumer group's committed offset says (none committed: nothing was processed,
        nothing is owed). Afterwards the store's fence holds what Redis holds for
        exactly these partitions; a partition Redis knows nothing of is marked with the
        offset the rebuild starts at (everything before it is older than the TTL).
        """
        held = await self.store.applied({p for _, p in going_on})
        unknown = [key for key, offset in going_on.items() if offset is None]
        committed = await self.committed(unknown) if unknown else {}
        nxt = {key: committed.get(key) if o is None else o for key, o in going_on.items()}
        behind = [key for key, o in nxt.items() if o is not None and _or_none(held[key]) < o]
        bounds = await self.bounds(behind) if behind else {}
        rewinds: dict[Key, tuple[int, int]] = {}
        marks: dict[Key, int] = {}
        for key, offset in nxt.items():
            have = held[key]
            if key not in behind:
                if have is None:
                    marks[key] = 0  # a partition never processed: nothing is owed
                continue
            assert offset is not None
            first, within_ttl = bounds[key]
            # Never before the partition's first record: retention may have deleted
            # what Redis's offset points to.
            start = max(first, within_ttl if have is None else have)
            if have is None:
                marks[key] = min(start, offset)
            if start < offset:
                rewinds[key] = (start, offset)
        fence = self.store.expected
        fence.clear()
        fence.update(
            {key: have for key, have in held.items() if key in going_on and have is not None}
        )
        if marks:
            await self.store.write([], [], offsets=marks)
        return rewinds

    async def committed(self, keys: list[Key]) -> dict[Key, int | None]:
        """Return the consumer group's committed offsets (None: none committed)."""
        consumer = AIOKafkaConsumer(
            **client_options(self.settings), group_id=self.settings.app_id, enable_auto_commit=False
        )
        await consumer.start()
        try:
            return {
                key: await consumer.committed(TopicPartition(self.topics[key[0]], key[1]))
                for key in keys
            }
        finally:
            await consumer.stop()

    async def bounds(self, keys: list[Key]) -> dict[Key, tuple[int, int]]:
        """Return each partition's first offset, and its first record at most the TTL old."""
        consumer = AIOKafkaConsumer(**client_options(self.settings))
        await consumer.start()
        try:
            tps = {key: TopicPartition(self.topics[key[0]], key[1]) for key in keys}
            since_ms = int((time.time() - self.settings.session_ttl_s) * 1000)
            found = await consumer.offsets_for_times({tp: since_ms for tp in tps.values()})
            begin = await consumer.beginning_offsets(list(tps.values()))
            end = await consumer.end_offsets(list(tps.values()))
        finally:
            await consumer.stop()
        out = {}
        for key, tp in tps.items():
            at = found.get(tp)
            out[key] = (begin[tp], max(begin[tp], end[tp] if at is None else at.offset))
        return out


def _or_none(offset: int | None) -> int:
    """An applied offset, -1 where Redis holds none."""
    return -1 if offset is None else offset
