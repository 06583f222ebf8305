"""Dead letters after a fix: list them, or publish their original bytes to their source.

    python -m stream dead-letters list   [--stage S] [--source-topic T]
    python -m stream dead-letters replay [--stage S] [--source-topic T] [--dry-run]

A letter whose original was cut (``original_truncated``) is counted, never sent back.
`replay` reads `ga.dead-letters` as the consumer group ``<app id>.dead-letter-replay``
and commits its position once the original events are on their source topics, so a
second run sends only dead letters that arrived since. `list` reads the whole topic
and commits nothing.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from contracts import topics
from stream.kafka import client_options
from stream.settings import StreamSettings


@dataclass
class DeadLetterRun:
    """What a pass over the dead-letter topic found and did."""

    read: int = 0
    matched: int = 0
    sent: int = 0
    unreadable: int = 0
    truncated: int = 0  # matched, but only the head of the original was kept
    by_stage: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)


def _matches(letter: dict, stage: str | None, source_topic: str | None) -> bool:
    if stage is not None and letter.get("stage") != stage:
        return False
    return source_topic is None or letter.get("source_topic") == source_topic


async def _drain(consumer: AIOKafkaConsumer, idle_s: float) -> list:
    """Read until the consumer has reached the end of every assigned partition."""
    records = []
    last_new = time.monotonic()
    while time.monotonic() - last_new < idle_s:
        batch = await consumer.getmany(timeout_ms=300, max_records=5000)
        for recs in batch.values():
            records.extend(recs)
            if recs:
                last_new = time.monotonic()
    return records


async def run_dead_letters(
    settings: StreamSettings,
    *,
    replay: bool,
    stage: str | None = None,
    source_topic: str | None = None,
    dry_run: bool = False,
    idle_s: float = 3.0,
) -> DeadLetterRun:
    """List or replay the dead letters that match the filters."""
    name = topics.topic_name(topics.DEAD_LETTERS, settings.topic_prefix)
    committing = replay and not dry_run
    consumer = AIOKafkaConsumer(
        name,
        **client_options(settings),
        group_id=f"{settings.app_id}.dead-letter-replay" if committing else None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = None
    run = DeadLetterRun()
    await consumer.start()
    try:
        records = await _drain(consumer, idle_s)
        pending = []
        if committing:
            producer = AIOKafkaProducer(**client_options(settings), acks="all")
            await producer.start()
        for rec in records:
            run.read += 1
            try:
                letter = orjson.loads(rec.value)
                original = base64.b64decode(letter["original_base64"])
                target = letter["source_topic"]
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                run.unreadable += 1
                continue
            if not _matches(letter, stage, source_topic):
                continue
            run.matched += 1
            if letter.get("original_truncated"):
                # Only its head was kept: sending that back would be a new bad event.
                run.truncated += 1
                continue
            run.by_stage[str(letter.get("stage"))] += 1
            run.by_source[target] += 1
            if producer is not None:
                key = letter.get("key")
                pending.append(
                    await producer.send(
                        target, original, key=None if key is None else str(key).encode()
                    )
                )
        if pending:
            await asyncio.gather(*pending)
            run.sent = len(pending)
        if committing and records:
            await consumer.commit()
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()
    return run


def report(run: DeadLetterRun, replay: bool, dry_run: bool) -> str:
    """Say what a pass found, in a few lines."""
    lines = [f"{run.read} dead letters read, {run.matched} matched, {run.unreadable} unreadable"]
    if run.truncated:
        lines.append(f"  {run.truncated} kept only the head of their original: not replayable")
    for stage, n in sorted(run.by_stage.items()):
        lines.append(f"  stage {stage}: {n}")
    for source, n in sorted(run.by_source.items()):
        lines.append(f"  from {source}: {n}")
    if replay:
        lines.append(
            "dry run: nothing sent" if dry_run else f"{run.sent} sent back to their source topics"
        )
    return "\n".join(lines)
