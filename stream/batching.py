"""Micro-batches that are as large as the backlog and as quick as a single event.

Faust's ``take_events`` waits a fixed time for a batch to fill. That wait is the floor
of every event's latency at a low rate, and at a high rate a batch fills anyway. Here a
batch is handed over as soon as the agent is free to take it: an event that arrives
alone is processed at once, and while a batch is processed the next one gathers, so
batches grow with the load by themselves (up to ``max_size``).

A pump task moves events from the stream into a local buffer, and the agent takes the
whole buffer once the stream's queue is empty or the buffer full. The agent never
waits on the stream while it holds events: when a rebalance starts, Faust clears the
streams' queues and waits until every event already taken is acked, and an agent
blocked on an emptied queue with a batch in hand would hold the rebalance up until the
group gives up on the worker.

Events are acked only when the agent asks for the next batch, that is after it has
processed and published the previous one; an exception leaves them unacked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


class _Pump:
    """Moves a stream's events into a buffer of at most ``max_size``, in the background."""

    def __init__(self, stream: Any, max_size: int) -> None:
        self.stream = stream
        self.max_size = max_size
        self.buffer: list[Any] = []
        self.filled = asyncio.Event()  # the buffer has events, or the pump failed
        self.room = asyncio.Event()  # the buffer has room
        self.room.set()
        self.error: BaseException | None = None

    async def run(self) -> None:
        try:
            async for event in self.stream.events():
                self.buffer.append(event)
                self.filled.set()
                if len(self.buffer) >= self.max_size:
                    self.room.clear()
                    await self.room.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the agent, which raises it
            self.error = exc
            self.filled.set()

    def take(self) -> list[Any]:
        batch, self.buffer = self.buffer[: self.max_size], self.buffer[self.max_size :]
        if not self.buffer:
            self.filled.clear()
        self.room.set()
        return batch


async def batches(stream: Any, max_size: int) -> AsyncIterator[list[Any]]:
    """Yield lists of a Faust stream's events; ack each list when the next is asked for."""
    manual = stream.noack()  # the events are acked here, once processed
    queue = manual.channel.queue
    pump = _Pump(manual, max_size)
    task = asyncio.ensure_future(pump.run())
    try:
        while True:
            await pump.filled.wait()
            # Let the pump move what is queued already (it yields to the loop per event).
            while not queue.empty() and len(pump.buffer) < max_size and pump.error is None:
                await asyncio.sleep(0)
            if pump.error is not None:
                raise pump.error
            batch = pump.take()
            yield batch
            for event in batch:
                await manual.ack(event)
    finally:
        task.cancel()
