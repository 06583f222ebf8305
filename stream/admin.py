"""Creating the service's topics before anything subscribes to them."""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from contracts import topics
from stream.kafka import client_options
from stream.settings import StreamSettings

log = logging.getLogger(__name__)


async def ensure_topics(settings: StreamSettings) -> None:
    """Create every topic of the contract that does not exist yet."""
    names = [topics.topic_name(t, settings.topic_prefix) for t in topics.ALL_TOPICS]
    partitions = settings.topic_partitions
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            result = await admin.create_topics(
                [NewTopic(name=n, num_partitions=partitions, replication_factor=1) for n in missing]
            )
            log.info("created topics %s (%s)", missing, result)
        # Creation is asynchronous on the broker: wait until metadata shows every topic.
        for _ in range(50):
            if set(names) <= set(await admin.list_topics()):
                return
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
