"""The close sweep and the hits of a session take turns, and only that session waits.

The processor runs on the real Redis of the local stack with the test model.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from artifact import load_model
from contracts.dashboard import HOT_ANCHOR
from stream.processor import Processor
from stream.state import RedisStore
from tests.stream.test_parked_hits import _records, sessions_and_hits  # noqa: F401

pytestmark = pytest.mark.redis

EVERY_SESSION_DUE = -1e15  # a gap so negative that every open session is past it


@dataclass
class Idle:
    """Two sessions with one hit applied to each, both past the inactivity gap."""

    processor: Processor
    a: str
    b: str
    second_hit_of_a: list[bytes]
    upto: dict[int, float]


@pytest.fixture()
async def idle(
    store: RedisStore,
    model_path: Path,
    sessions_and_hits: tuple[list[bytes], dict],  # noqa: F811
) -> Idle:
    rows, hits = sessions_and_hits
    processor = Processor(load_model(model_path), store, hits_topic="t.hits")
    started = await processor.sessions(_records("t.sessions", rows[:2], 0))
    await processor.release(started.released)
    a, b = (orjson.loads(r)["session_id"] for r in rows[:2])
    applied = await processor.hits(_records("t.hits", [hits[a][0], hits[b][0]], 10))
    assert len(applied.scores) == 2
    processor.watermarks[("hits", 3)] = (4e12, time.time() * 1000.0)
    upto = await processor.close_horizon({3: frozenset()}, EVERY_SESSION_DUE)
    return Idle(processor, a, b, [hits[a][1]], upto)


async def test_a_hit_for_a_session_being_closed_waits_for_the_close(idle: Idle) -> None:
    processor = idle.processor
    order: list[str] = []

    async def late_hit() -> None:
        async with processor.hits_batch(_records("t.hits", idle.second_hit_of_a, 20)) as out:
            order.append(f"hit applied, late={out.late}")

    async with processor.closing(idle.upto) as closing:
        assert sorted(s for sids in closing.closed.values() for s in sids) == sorted(
            [idle.a, idle.b]
        )
        waiter = asyncio.create_task(late_hit())
        await asyncio.sleep(0.05)
        assert order == []  # held while the close's events would be published
        order.append("close published")
    await waiter
    assert order == ["close published", "hit applied, late=1"]
    # The late hit is written as such: its session stays off the dashboard's hot list
    # and open count (the store takes the hit's word for it).
    store, dash = processor.store, processor.store.dash(3)
    assert (await store.read({idle.a: 3}))[0][idle.a].closed
    assert await store.r.zrange(f"{dash}:hot", 0, -1) in ([], [HOT_ANCHOR.encode()])
    assert await store.r.hget(f"{dash}:meta", "active") == b"0"


async def test_the_sweep_leaves_a_session_a_hits_batch_holds_and_closes_the_rest(
    idle: Idle,
) -> None:
    processor = idle.processor
    async with processor.hits_batch(_records("t.hits", idle.second_hit_of_a, 20)) as out:
        assert len(out.scores) == 1 and out.late == 0
        # Closing does not wait for the batch: it leaves its session for the next sweep.
        closing = await asyncio.wait_for(processor.close_due(idle.upto), 5.0)
        assert [s for sids in closing.closed.values() for s in sids] == [idle.b]
    assert not processor.gate.held
    await processor.finish_close(closing.closed)
    later = await processor.close_due(idle.upto)
    assert [s for sids in later.closed.values() for s in sids] == [idle.a]
