"""Holding a session partition back while its hits are behind, with a fake consumer."""

import asyncio
from typing import Any, NamedTuple

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import IllegalStateError
from aiokafka.structs import TopicPartition

from stream.alignment import Alignment
from stream.faust_seam import set_fetching
from stream.metrics import WorkerMetrics
from stream.settings import StreamSettings

MIN = 60_000.0


class TP(NamedTuple):
    topic: str
    partition: int


class FakeConsumer:
    def __init__(self, tps: list[TP], high: dict[TP, int | None]) -> None:
        self.tps = tps
        self.high = high
        self.fetch_position: dict[TP, int] = {}  # where the consumer reads next
        self.paused: set[TP] = set()
        self.client_tps: set[TP] | None = None  # the Kafka client's own, when it differs

    def assignment(self) -> set[TP]:
        return set(self.tps)

    def highwater(self, tp: TP) -> int | None:
        return self.high[tp]

    async def position(self, tp: TP) -> int | None:
        if tp not in self.tps:
            raise KeyError(tp)
        return self.fetch_position.get(tp)


class FakeApp:
    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer
        self.consumer_generation_id = 1


class FakeAlignment(Alignment):
    """The real decisions; pausing is recorded on the fake consumer."""

    async def fetching(self, tps: list[Any], on: bool) -> list[Any]:
        consumer = self.app.consumer
        has = consumer.assignment() if consumer.client_tps is None else consumer.client_tps
        mine = [tp for tp in tps if tp in has]
        if on:
            consumer.paused.difference_update(mine)
        else:
            consumer.paused.update(mine)
        return mine


class FakeProcessor:
    def __init__(self) -> None:
        self.watermarks: dict[tuple[str, int], tuple[float, float]] = {}


def _pipeline(lead_s: float = 300.0) -> tuple[Alignment, FakeConsumer, FakeProcessor]:
    settings = StreamSettings(align_lead_s=lead_s, model_path="/nonexistent/model.pkl")
    sessions = TP("ga.sessions", 0)
    hits = TP("ga.hits", 0)
    consumer = FakeConsumer([sessions, hits], {sessions: 100, hits: 1000})
    consumer.fetch_position[sessions] = 0
    processor = FakeProcessor()
    pipe = FakeAlignment(FakeApp(consumer), settings, WorkerMetrics(), processor.watermarks, {})
    pipe.positions[("ga.hits", 0)] = 200  # 800 hits still to read
    return pipe, consumer, processor


def _marks(processor: Any, sessions_min: float, hits_min: float) -> None:
    processor.watermarks[("sessions", 0)] = (sessions_min * MIN, 0.0)
    processor.watermarks[("hits", 0)] = (hits_min * MIN, 0.0)


def test_sessions_far_ahead_of_a_hits_backlog_are_paused_then_resumed() -> None:
    pipe, consumer, processor = _pipeline(lead_s=300)
    _marks(processor, sessions_min=60, hits_min=50)  # 10 min ahead, lead 5 min
    asyncio.run(pipe.align())
    assert consumer.paused == {TP("ga.sessions", 0)}
    assert pipe.metrics.paused._value.get() == 1
    # Still more than half the lead ahead: stays paused (no flapping).
    _marks(processor, sessions_min=60, hits_min=57)
    asyncio.run(pipe.align())
    assert consumer.paused == {TP("ga.sessions", 0)}
    _marks(processor, sessions_min=60, hits_min=58)
    asyncio.run(pipe.align())
    assert consumer.paused == set()
    assert pipe.metrics.paused._value.get() == 0


def test_within_the_lead_nothing_is_paused() -> None:
    pipe, consumer, processor = _pipeline(lead_s=300)
    _marks(processor, sessions_min=60, hits_min=56)
    asyncio.run(pipe.align())
    assert consumer.paused == set()


def test_hits_with_nothing_left_to_read_never_hold_sessions_back() -> None:
    pipe, consumer, processor = _pipeline(lead_s=300)
    _marks(processor, sessions_min=600, hits_min=50)
    pipe.positions[("ga.hits", 0)] = 1000  # caught up
    asyncio.run(pipe.align())
    assert consumer.paused == set()
    # A paused partition is let go as soon as the hits are caught up.
    pipe.positions[("ga.hits", 0)] = 200
    asyncio.run(pipe.align())
    assert consumer.paused == {TP("ga.sessions", 0)}
    pipe.positions[("ga.hits", 0)] = 1000
    asyncio.run(pipe.align())
    assert consumer.paused == set()


def test_no_hits_read_yet_or_no_limit_means_no_pause() -> None:
    pipe, consumer, processor = _pipeline(lead_s=300)
    processor.watermarks[("sessions", 0)] = (600 * MIN, 0.0)
    asyncio.run(pipe.align())  # no hits mark yet: nothing to compare with
    assert consumer.paused == set()
    pipe, consumer, processor = _pipeline(lead_s=0)
    _marks(processor, sessions_min=600, hits_min=50)
    asyncio.run(pipe.align())
    assert consumer.paused == set()


def test_after_a_rebalance_a_partition_still_ahead_is_paused_again() -> None:
    pipe, consumer, processor = _pipeline(lead_s=300)
    _marks(processor, sessions_min=60, hits_min=50)
    asyncio.run(pipe.align())
    assert pipe.metrics.pauses._value.get() == 1
    consumer.paused.clear()  # a new generation: the client's assignment is fresh
    pipe.app.consumer_generation_id += 1
    asyncio.run(pipe.align())
    assert consumer.paused == {TP("ga.sessions", 0)}
    assert pipe.metrics.pauses._value.get() == 2


def test_a_partition_that_moves_away_is_forgotten() -> None:
    pipe, consumer, processor = _pipeline(lead_s=300)
    _marks(processor, sessions_min=60, hits_min=50)
    asyncio.run(pipe.align())
    consumer.tps = []  # revoked
    asyncio.run(pipe.align())
    assert pipe.held == set()


def test_a_partition_the_client_lost_meanwhile_is_not_held() -> None:
    # A rebalance in the client's thread took the partition after the worker read its
    # assignment: nothing is paused, and the partition is not counted as held.
    pipe, consumer, processor = _pipeline(lead_s=300)
    _marks(processor, sessions_min=60, hits_min=50)
    consumer.client_tps = set()
    asyncio.run(pipe.align())
    assert consumer.paused == set()
    assert pipe.held == set()
    assert pipe.metrics.pauses._value.get() == 0


def test_pausing_and_resuming_skip_partitions_the_client_does_not_have() -> None:
    async def check() -> None:
        client = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        mine, gone = TopicPartition("ga.sessions", 0), TopicPartition("ga.sessions", 1)
        client.assign([mine])
        with pytest.raises(IllegalStateError):
            client.resume(gone)  # what a resume after a rebalance did before
        assert set_fetching(client, [mine, gone], False) == {mine}
        assert client.paused() == {mine}
        assert set_fetching(client, [gone, mine], True) == {mine}
        assert client.paused() == set()
        await client.stop()

    asyncio.run(check())


def test_behind_names_the_kinds_with_records_left_to_read() -> None:
    pipe, consumer, _ = _pipeline()
    consumer.high[TP("ga.sessions", 0)] = 100
    pipe.positions[("ga.sessions", 0)] = 100  # sessions read to the end
    assert asyncio.run(pipe.behind(0)) == {"hits"}  # hits: 800 left
    pipe.positions[("ga.hits", 0)] = 1000
    assert asyncio.run(pipe.behind(0)) == set()
    assert asyncio.run(pipe.behind(3)) == set()  # not assigned here


def test_a_partition_not_read_here_yet_counts_from_the_consumers_position() -> None:
    # A worker that has just taken over partition 0 of a backlog: nothing processed yet.
    pipe, consumer, _ = _pipeline()
    pipe.positions.clear()
    sessions, hits = TP("ga.sessions", 0), TP("ga.hits", 0)
    consumer.fetch_position.update({sessions: 100, hits: 400})  # committed offsets
    assert asyncio.run(pipe.behind(0)) == {"hits"}  # 600 hits to read, sessions at the end
    consumer.high[sessions] = None  # no fetch answered yet: not known to be quiet
    assert asyncio.run(pipe.behind(0)) == {"sessions", "hits"}
    consumer.high[sessions] = 100
    consumer.fetch_position[hits] = 1000
    assert asyncio.run(pipe.behind(0)) == set()  # caught up: may count as quiet


def test_the_lead_is_at_least_four_hits_fetches_of_event_time() -> None:
    pipe, consumer, processor = _pipeline(lead_s=300)
    pipe.hits_span[0] = 10 * MIN  # the latest hits fetch moved the hits mark 10 min
    _marks(processor, sessions_min=80, hits_min=50)  # 30 min ahead: within 4 x 10 min
    asyncio.run(pipe.align())
    assert consumer.paused == set()
    _marks(processor, sessions_min=100, hits_min=50)  # 50 min ahead
    asyncio.run(pipe.align())
    assert consumer.paused == {TP("ga.sessions", 0)}
    # Resumed at half of that lead, two fetches' worth ahead, not at half of 5 min.
    _marks(processor, sessions_min=100, hits_min=79)
    asyncio.run(pipe.align())
    assert consumer.paused == {TP("ga.sessions", 0)}
    _marks(processor, sessions_min=100, hits_min=80)
    asyncio.run(pipe.align())
    assert consumer.paused == set()
