"""Micro-batches cut where the queue runs dry, and acked only once processed (fake stream)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from stream.batching import batches


class FakeStream:
    """The part of a Faust stream ``batches`` uses: a queue, events, manual acks."""

    def __init__(self) -> None:
        self.channel = self
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.acked: list[Any] = []
        self.manual = False
        self.rebalance_after: int | None = None  # events taken before a rebalance starts

    def noack(self) -> FakeStream:
        self.manual = True
        return self

    async def events(self) -> AsyncIterator[Any]:
        taken = 0
        while True:
            await asyncio.sleep(0)  # as Faust's stream iterator does before each get
            if self.rebalance_after is not None and taken >= self.rebalance_after:
                while not self.queue.empty():  # Faust clears the queues at a rebalance
                    self.queue.get_nowait()
            yield await self.queue.get()
            taken += 1

    async def ack(self, event: Any) -> bool:
        self.acked.append(event)
        return True


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 5.0))


def test_a_batch_holds_everything_queued_and_no_more_than_the_maximum() -> None:
    async def scenario() -> list[list[int]]:
        s = FakeStream()
        for i in range(7):
            s.queue.put_nowait(i)
        it = batches(s, max_size=5)
        return [await anext(it), await anext(it)]

    assert _run(scenario()) == [[0, 1, 2, 3, 4], [5, 6]]


def test_an_event_that_arrives_alone_is_handed_over_at_once() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        s = FakeStream()
        it = batches(s, max_size=500)
        waiting = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # nothing queued: it waits for the first event
        s.queue.put_nowait(1)
        first = await asyncio.wait_for(waiting, 0.5)
        s.queue.put_nowait(2)
        s.queue.put_nowait(3)
        return first, await anext(it)

    assert _run(scenario()) == ([1], [2, 3])


def test_events_are_acked_only_when_the_next_batch_is_asked_for() -> None:
    async def scenario() -> FakeStream:
        s = FakeStream()
        for i in range(3):
            s.queue.put_nowait(i)
        it = batches(s, max_size=2)
        assert await anext(it) == [0, 1]
        assert s.manual and s.acked == []  # handed over, not processed yet
        assert await anext(it) == [2]
        assert s.acked == [0, 1]
        return s

    assert _run(scenario()).acked == [0, 1]


def test_a_batch_whose_processing_failed_is_not_acked() -> None:
    async def scenario() -> FakeStream:
        s = FakeStream()
        s.queue.put_nowait(1)
        s.queue.put_nowait(2)
        with pytest.raises(RuntimeError):
            async for _batch in batches(s, max_size=10):
                raise RuntimeError("processing failed")
        return s

    assert _run(scenario()).acked == []


def test_a_batch_in_hand_is_not_held_back_when_a_rebalance_empties_the_queue() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        s = FakeStream()
        for i in range(3):
            s.queue.put_nowait(i)
        s.rebalance_after = 1  # the queue is emptied once the first event is taken
        it = batches(s, max_size=10)
        first = await asyncio.wait_for(anext(it), 1.0)  # handed over, not held
        waiting = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # no more events until the rebalance is over
        waiting.cancel()
        return first, list(s.acked)

    # Faust waits for the events taken to be acked before the rebalance can go on.
    assert _run(scenario()) == ([0], [0])


def test_an_error_of_the_stream_reaches_the_agent() -> None:
    class Broken(FakeStream):
        async def events(self) -> AsyncIterator[Any]:
            yield 1
            raise RuntimeError("stream failed")

    async def scenario() -> list[list[int]]:
        got = []
        with pytest.raises(RuntimeError, match="stream failed"):
            async for batch in batches(Broken(), max_size=10):
                got.append(batch)
        return got

    assert _run(scenario()) in ([[1]], [])
