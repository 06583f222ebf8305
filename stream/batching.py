"""Micro-batches that are as large as the backlog and as quick as a single event.

Faust's ``take_events`` waits a fixed time for a batch to fill. That wait is the floor
of every event's latency at a low rate, and at a high rate a batch fills anyway. Here a
batch is handed over as soon as nothing more is queued for the stream (or it is full):
an event that arrives alone is processed at once, and while a batch is processed the
next one gathers in the stream's queue, so batches grow with the load by themselves.

Events are acknowledged only when the caller asks for the next batch, that is, after it
has processed and published the previous one; an exception leaves them unacked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any


async def batches(stream: Any, max_size: int) -> AsyncIterator[list[Any]]:
    """Yield lists of a Faust stream's events; ack each list when the next is asked for."""
    manual = stream.noack()  # the events are acked here, once processed
    queue = manual.channel.queue
    events = manual.events().__aiter__()
    while True:
        batch = [await events.__anext__()]
        while len(batch) < max_size and not queue.empty():
            batch.append(await events.__anext__())
        yield batch
        for event in batch:
            await manual.ack(event)
