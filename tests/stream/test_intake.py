"""The batch intake: what may be committed, and how a fetch is cut into batches."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.types import TP

from stream.app import _interleave, create_app
from stream.intake import BatchConsumer
from stream.processor import Record
from stream.settings import StreamSettings


class Rec:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def bare_consumer() -> Any:
    """The consumer's own bookkeeping, without Faust's machinery around it."""
    c = BatchConsumer.__new__(BatchConsumer)
    c.done = {}
    c.in_flight = None
    return c


A, B = TP("t.ga.hits", 0), TP("t.ga.hits", 1)


async def test_a_fetch_is_committable_only_once_its_handler_returned() -> None:
    c = bare_consumer()
    release = asyncio.Event()
    seen: list[Any] = []

    async def handler(fetch: Any) -> None:
        seen.append(fetch)
        await release.wait()

    task = asyncio.ensure_future(c._handle(handler, {A: [Rec(7), Rec(8)], B: [Rec(3)]}))
    await asyncio.sleep(0.01)
    assert seen and c._new_offset(A) is None and list(c._filter_tps_with_pending_acks()) == []
    release.set()
    await task
    assert (c._new_offset(A), c._new_offset(B)) == (9, 4)
    assert set(c._filter_tps_with_pending_acks()) == {A, B}
    assert list(c._filter_tps_with_pending_acks({B})) == [B]
    assert list(c._filter_tps_with_pending_acks({"t.ga.hits"})) == [A, B]


async def test_a_failed_fetch_moves_no_offset() -> None:
    c = bare_consumer()
    c.done[A] = 5

    async def handler(fetch: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await c._handle(handler, {A: [Rec(5), Rec(6)]})
    assert c._new_offset(A) == 5


async def test_revoked_partitions_are_forgotten() -> None:
    c = bare_consumer()
    c.done.update({A: 3, B: 4})
    c.forget({A})
    assert c._new_offset(A) is None and c._new_offset(B) == 4


async def test_wait_empty_lets_the_batch_in_hand_finish_first(monkeypatch: Any) -> None:
    c = bare_consumer()
    order: list[str] = []

    async def handler(fetch: Any) -> None:
        await asyncio.sleep(0.05)
        order.append("handled")

    async def faust_wait_empty(self: Any) -> None:
        order.append("committed")

    monkeypatch.setattr("faust.transport.consumer.Consumer.wait_empty", faust_wait_empty)
    c.in_flight = asyncio.ensure_future(c._handle(handler, {A: [Rec(1)]}))
    await c.wait_empty()
    assert order == ["handled", "committed"] and c._new_offset(A) == 2


def recs(partition: int, offsets: range) -> list[Record]:
    return [Record(b"", "t.ga.hits", partition, o) for o in offsets]


def test_batches_take_every_partition_in_turn_and_keep_each_in_order() -> None:
    runs = [recs(0, range(0, 700)), recs(1, range(0, 30)), recs(2, range(0, 400))]
    batches = list(_interleave(runs, 500))
    assert all(len(b) <= 500 for b in batches)
    assert sum(len(b) for b in batches) == 1130
    first = {r.partition for r in batches[0]}
    assert first == {0, 1, 2}  # no partition waits for another's whole buffer
    for p in range(3):
        offsets = [r.offset for b in batches for r in b if r.partition == p]
        assert offsets == sorted(offsets) and len(offsets) == len(set(offsets))
    assert len(batches[0]) == 500  # the batches are full while there is enough


def test_one_partition_fills_whole_batches() -> None:
    batches = list(_interleave([recs(0, range(1200))], 500))
    assert [len(b) for b in batches] == [500, 500, 200]


async def test_the_kafka_client_fetches_with_the_settings_wait_and_size(tmp_path: Any) -> None:
    settings = StreamSettings(
        data_dir=tmp_path, kafka_fetch_wait_ms=7, kafka_fetch_min_bytes=12_345, metrics_port=0
    )
    consumer = create_app(settings).consumer
    client = consumer._thread._create_worker_consumer(consumer.transport)
    try:
        assert (client._fetch_max_wait_ms, client._fetch_min_bytes) == (7, 12_345)
    finally:
        await client.stop()


async def test_a_rewind_seeks_the_fetch_back_and_commits_nothing_of_it() -> None:
    from stream.intake import Rewind

    c = bare_consumer()
    seeks: list[dict] = []

    class Thread:
        async def seek_wait(self, offsets: dict) -> None:
            seeks.append(offsets)

    c._thread = Thread()

    async def handler(fetch: Any) -> None:
        raise Rewind({A: 3})  # Redis holds A up to 3: read it again from there

    await c._handle(handler, {A: [Rec(10), Rec(11)], B: [Rec(7)]})
    assert seeks == [{A: 3, B: 7}]  # B is read again from the fetch's first record
    assert c.done == {}


def test_the_faust_internals_the_rewind_relies_on_are_there() -> None:
    # A new faust-streaming that renames these breaks the rebuild: this says so first.
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    assert callable(getattr(Consumer, "perform_seek", None)), "Consumer.perform_seek is gone"
    assert callable(getattr(AIOKafkaConsumerThread, "seek_wait", None)), (
        "AIOKafkaConsumerThread.seek_wait is gone"
    )
    assert "_read_offset" in Consumer.__annotations__, "Consumer._read_offset is gone"
