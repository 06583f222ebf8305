"""How the worker hands a batch's output to the Kafka producer (``Publisher.send_all``)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from contracts.scores import score_event
from stream.app import create_app
from stream.metrics import WorkerMetrics
from stream.publisher import Publisher
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


def _pipeline(producer: FakeProducer) -> Publisher:
    settings = StreamSettings(model_path="/nonexistent/model.pkl")
    return Publisher(FakeApp(producer), settings, WorkerMetrics())


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


def test_a_message_too_large_for_kafka_goes_out_as_a_small_dead_letter_instead() -> None:
    from contracts import limits

    producer = FakeProducer(partitions=3, batch_size=4 * limits.OUTPUT_MAX_BYTES)
    appended: list[tuple[bytes | None, bytes]] = []
    make = producer.create_batch

    def recording() -> BatchBuilder:
        batch = make()
        append = batch.append

        def add(*, key: bytes | None, value: bytes, timestamp: None) -> Any:
            appended.append((key, value))
            return append(key=key, value=value, timestamp=timestamp)

        batch.append = add  # type: ignore[method-assign]
        return batch

    producer.create_batch = recording  # type: ignore[method-assign]
    pipe = _pipeline(producer)
    huge = b"x" * (limits.OUTPUT_MAX_BYTES + 1)
    asyncio.run(pipe.send_all([("scores", b"s1", b"{}"), ("scores", b"s2", huge)]))
    topics = [t for t, _, _, _ in producer.sent]
    assert sorted(topics) == sorted(["scores", pipe.dead_name])
    assert (b"s1", b"{}") in appended and all(v != huge for _, v in appended)
    (letter,) = [orjson.loads(v) for k, v in appended if k is None]
    assert (letter["stage"], letter["kind"], letter["original_bytes"]) == (
        "publish",
        "too_large",
        len(huge),
    )
    assert pipe.metrics.refused.labels("publish", "too_large")._value.get() == 1


def test_exit_reasons_survive_the_process_and_count_at_the_next_start(tmp_path) -> None:
    from stream.metrics import ExitLog

    log = ExitLog(tmp_path / "exits.json")
    assert log.counts() == {}
    log.record("redis", "a sessions batch: InfrastructureError")
    log.record("redis", "again")
    log.record("bug", "a hits batch: KeyError")
    metrics = WorkerMetrics()
    metrics.restarted(ExitLog(tmp_path / "exits.json"))
    assert metrics.exits.labels("redis")._value.get() == 2
    assert metrics.exits.labels("bug")._value.get() == 1
    (tmp_path / "exits.json").write_text("{broken")
    assert ExitLog(tmp_path / "exits.json").counts() == {}
