"""Creating the service's topics before anything subscribes to them."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from contracts import topics
from stream.kafka import client_options
from stream.settings import StreamSettings

log = logging.getLogger(__name__)


class TopicMismatch(RuntimeError):
    """The input topics cannot be processed together: their partition counts differ."""


async def ensure_topics(settings: StreamSettings) -> int:
    """Create every topic of the contract that does not exist yet.

    Returns the partition count of the input topics. A session's row and its hits are
    keyed by session id, so they share a partition number only if both topics have the
    same count: otherwise this raises TopicMismatch.
    """
    names = [topics.topic_name(t, settings.topic_prefix) for t in topics.ALL_TOPICS]
    partitions = settings.topic_partitions
    single = {topics.topic_name(t, settings.topic_prefix) for t in topics.SINGLE_PARTITION_TOPICS}
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            result = await admin.create_topics(
                [
                    NewTopic(
                        name=n,
                        num_partitions=1 if n in single else partitions,
                        replication_factor=settings.topic_replication,
                    )
                    for n in missing
                ]
            )
            log.info("created topics %s (%s)", missing, result)
        # Creation is asynchronous on the broker: wait until metadata shows every topic.
        for _ in range(50):
            if set(names) <= set(await admin.list_topics()):
                break
            await asyncio.sleep(0.2)
        inputs = [
            topics.topic_name(t, settings.topic_prefix) for t in (topics.SESSIONS, topics.HITS)
        ]
        counts = {}
        for _ in range(50):
            found = await admin.describe_topics(inputs)
            counts = {t["topic"]: len(t["partitions"]) for t in found if not t.get("error_code")}
            if len(counts) == len(inputs) and all(counts.values()):
                break
            await asyncio.sleep(0.2)
        if len(set(counts.values())) != 1 or len(counts) != len(inputs):
            raise TopicMismatch(
                f"the input topics must have one partition count (session rows and hits "
                f"are keyed by session id and must meet on one partition): {counts}"
            )
        return next(iter(counts.values()))
    finally:
        await admin.close()
