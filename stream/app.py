"""The Faust app, its topics and its agents."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

import faust

from contracts import topics
from stream.processor import Output, Processor, Record
from stream.settings import StreamSettings
from stream.state import InfrastructureError

log = logging.getLogger(__name__)

# Exit code when Redis or Kafka stay unreachable: the batch is not acked, a supervisor
# restarts the worker and the batch is delivered again.
EXIT_INFRASTRUCTURE = 70
EXIT_BUG = 71


class Counters:
    """Counts of what the worker has done, for logs and metrics."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n


def create_app(settings: StreamSettings) -> faust.App:
    """Build the Faust app with its topics (agents come with ``attach_agents``)."""
    return faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.topic_partitions,
        processing_guarantee="at_least_once",
        datadir=str(settings.data_dir),
        web_enabled=False,
        store="memory://",
        producer_linger_ms=5,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
    )


def attach_agents(app: faust.App, settings: StreamSettings, processor: Processor) -> Counters:
    """Declare the topics and the two agents that feed the processor."""
    prefix = settings.topic_prefix
    sessions_topic = app.topic(topics.topic_name(topics.SESSIONS, prefix))
    hits_topic = app.topic(topics.topic_name(topics.HITS, prefix))
    scores_name = topics.topic_name(topics.SCORES, prefix)
    dead_name = topics.topic_name(topics.DEAD_LETTERS, prefix)
    hits_name = topics.topic_name(topics.HITS, prefix)
    counters = Counters()

    async def send_all(messages: list[tuple[str, bytes | None, bytes]]) -> None:
        producer = app.producer
        futures = [
            await producer.send(topic, key, value, None, None, None)
            for topic, key, value in messages
        ]
        # Acks follow delivery: a batch is acked only once all it produced is on Kafka.
        await asyncio.gather(*futures)

    async def publish(out: Output) -> None:
        await send_all(
            [(scores_name, sid.encode(), payload) for sid, payload in out.scores]
            + [(dead_name, None, payload) for payload in out.dead_letters]
        )
        if out.released:
            # Only now may hits of these sessions be applied: their start score is out.
            parked = await processor.release(out.released)
            await send_all([(hits_name, sid.encode(), raw) for sid, raw in parked])
            await processor.forget_pending(sorted({sid for sid, _ in parked}))
            counters.add("requeued_hits", len(parked))
        counters.add("scores", len(out.scores))
        counters.add("dead_letters", len(out.dead_letters))
        counters.add("duplicates", out.duplicates)
        counters.add("parked", out.parked)

    async def run(kind: str, events: Sequence[Any]) -> None:
        records = [
            Record(
                value=e.message.value,
                topic=e.message.topic,
                partition=e.message.partition,
                offset=e.message.offset,
                key=e.message.key,
            )
            for e in events
        ]
        counters.add(f"in_{kind}", len(records))
        try:
            out = await (
                processor.sessions(records) if kind == "sessions" else processor.hits(records)
            )
            await publish(out)
        except InfrastructureError as exc:
            log.critical("giving up on %s batch: %s; exiting so it is delivered again", kind, exc)
            os._exit(EXIT_INFRASTRUCTURE)
        except Exception:
            # Faust would ack a batch whose agent raised: exit instead, unacked, so the
            # batch is delivered again once the bug is fixed. Bad data never gets here.
            log.critical("unexpected failure on a %s batch; exiting unacked", kind, exc_info=True)
            os._exit(EXIT_BUG)

    @app.agent(sessions_topic, concurrency=1)
    async def score_sessions(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max, settings.batch_within_s):
            await run("sessions", events)

    @app.agent(hits_topic, concurrency=1)
    async def score_hits(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max, settings.batch_within_s):
            await run("hits", events)

    @app.timer(interval=30.0)
    async def report() -> None:
        log.info("worker counters: %s", counters.values)

    return counters
