"""How the worker hands a batch's output to the Kafka producer (``Pipeline.send_all``)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from contracts.scores import score_event
from stream.app import Pipeline, create_app
from stream.metrics import WorkerMetrics
from stream.settings import StreamSettings


class FakeProducer:
    """Records what is submitted; every batch is delivered at once."""

    def __init__(self, partitions: int, batch_size: int = 16384) -> None:
        self.partitions = partitions
        self.batch_size = batch_size
        self.sent: list[tuple[str, int, BatchBuilder, bool]] = []  # topic, partition, batch, closed

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch, batch.closed()))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))


class FakeFaustProducer:
    def __init__(self, producer: FakeProducer) -> None:
        self.producer = producer

    def _ensure_producer(self) -> FakeProducer:
        return self.producer


class FakeApp:
    def __init__(self, producer: FakeProducer) -> None:
        self.producer = FakeFaustProducer(producer)


def _pipeline(producer: FakeProducer) -> Pipeline:
    settings = StreamSettings(model_path="/nonexistent/model.pkl")
    return Pipeline(FakeApp(producer), settings, None, WorkerMetrics())  # type: ignore[arg-type]


def test_every_batch_is_closed_when_submitted() -> None:
    # An open batch waits out the producer's linger time before it is sent.
    producer = FakeProducer(partitions=6)
    messages = [("scores", f"s{i}".encode(), b"{}") for i in range(40)]
    asyncio.run(_pipeline(producer).send_all(messages))
    assert producer.sent
    assert all(closed for _, _, _, closed in producer.sent)
    assert sum(b.record_count() for _, _, b, _ in producer.sent) == 40


def test_keys_go_where_the_default_partitioner_puts_them() -> None:
    producer = FakeProducer(partitions=6)
    keys = [f"session-{i}".encode() for i in range(30)]
    asyncio.run(_pipeline(producer).send_all([("scores", k, b"{}") for k in keys]))
    expected: dict[int, int] = {}
    for k in keys:
        p = (murmur2(k) & 0x7FFFFFFF) % 6
        expected[p] = expected.get(p, 0) + 1
    got = {p: b.record_count() for _, p, b, _ in producer.sent}
    assert got == expected


def test_a_full_batch_is_split_and_nothing_is_dropped() -> None:
    producer = FakeProducer(partitions=1, batch_size=1024)
    messages = [("scores", b"one-session", b"x" * 200) for _ in range(25)]
    asyncio.run(_pipeline(producer).send_all(messages))
    assert len(producer.sent) > 1
    assert all(closed for _, _, _, closed in producer.sent)
    assert sum(b.record_count() for _, _, b, _ in producer.sent) == 25


def test_a_full_batch_of_scores_takes_one_record_batch_per_partition() -> None:
    # The producer queues one record batch per partition at a time: a second one for
    # the same partition would wait until the first is sent, a Kafka round trip.
    settings = StreamSettings(model_path="/nonexistent/model.pkl")
    size = create_app(settings).conf.producer_max_batch_size
    producer = FakeProducer(partitions=6, batch_size=size)
    score = orjson.dumps(
        score_event(
            session_id="9055434745589932991.1637753792.1637753792",
            client_id="2108382700.1637753791",
            probability=0.0123456,
            model_version="xgb-20261128-abcdef12",
            trigger="hit",
            hit_number=123,
            event_time="2021-11-24T14:36:32.000+03:00",
            scored_at="2026-11-28T12:00:00.000+00:00",
        )
    )
    messages = [("scores", f"session-{i}".encode(), score) for i in range(settings.batch_max)]
    asyncio.run(_pipeline(producer).send_all(messages))
    assert sorted(p for _, p, _, _ in producer.sent) == list(range(6))
