"""The store's fence and the check of Redis against the input, on the real Redis.

The worker's own tests kill Redis under a replay (tests/integration/test_redis_faults.py);
these hold the pieces: a write that finds Redis behind writes nothing, the applied
offsets only rise, and the check says where to read again from.
"""

from __future__ import annotations

import numpy as np
import pytest

from stream.recovery import Recovery
from stream.settings import StreamSettings
from stream.state import RedisLost, RedisStore, SessionWrite

pytestmark = pytest.mark.redis


def _session(sid: str, partition: int = 0) -> SessionWrite:
    return SessionWrite(
        session_id=sid,
        client_id="c",
        start="2021-11-24T14:36:32+03:00",
        vector=np.zeros(3, dtype=np.float32),
        score_json=b"{}",
        history_field="session_start:",
        partition=partition,
    )


async def _applied(store: RedisStore, partition: int) -> dict[bytes, bytes]:
    return await store.r.hgetall(store.layout.applied(partition))


async def test_offsets_rise_with_the_write_and_never_fall(store: RedisStore) -> None:
    await store.write([_session("a")], [], offsets={("hits", 0): 15, ("sessions", 0): 4})
    assert await _applied(store, 0) == {b"hits": b"15", b"sessions": b"4"}
    assert store.expected == {("hits", 0): 15, ("sessions", 0): 4}
    await store.write([], [], offsets={("hits", 0): 12})  # a redelivered fetch
    assert await _applied(store, 0) == {b"hits": b"15", b"sessions": b"4"}
    assert store.expected[("hits", 0)] == 15


async def test_a_write_on_a_redis_that_lost_writes_is_refused_whole(store: RedisStore) -> None:
    await store.write([_session("a", 1)], [], offsets={("hits", 1): 30})
    # Redis loses its last writes: the offset goes back, or the key goes.
    await store.r.hset(store.layout.applied(1), "hits", "20")
    with pytest.raises(RedisLost):
        # On one Redis a batch is one call for all its partitions: none of it lands.
        await store.write([_session("b", 1), _session("b0", 0)], [], offsets={("hits", 1): 40})
    assert not await store.r.exists(store.layout.session(1, "b"))
    assert not await store.r.exists(store.layout.session(0, "b0"))
    assert (await _applied(store, 1))[b"hits"] == b"20"
    await store.r.delete(store.layout.applied(1))
    with pytest.raises(RedisLost):  # the key is gone: Redis lost everything
        await store.write([], [], events={1: 1})
    # Redis ahead of what this worker wrote (another worker went on): not a loss.
    await store.r.hset(store.layout.applied(1), "hits", "99")
    await store.write([_session("c", 1)], [])
    assert await store.r.exists(store.layout.session(1, "c"))


async def test_the_check_rewinds_where_redis_is_behind_and_marks_what_it_lacks(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.r.hset(store.layout.applied(0), mapping={"sessions": "5"})
    await store.r.hset(store.layout.applied(1), mapping={"sessions": "50", "hits": "70"})
    recovery = Recovery(StreamSettings(), store, {"sessions": "s", "hits": "h"})
    asked = []

    async def bounds(wanted: list) -> dict:
        asked.extend(wanted)
        return {key: (0, 3) for key in wanted}

    monkeypatch.setattr(recovery, "bounds", bounds)
    store.expected[("hits", 7)] = 1  # a partition given up since: forgotten by the check
    rewinds = await recovery.check(
        {("sessions", 0): 9, ("hits", 0): 7, ("sessions", 1): 40, ("hits", 1): 70}
    )
    assert sorted(asked) == [("hits", 0), ("sessions", 0)]
    # Behind: read again from Redis's offset; nothing held: from the TTL's first record.
    assert rewinds == {("sessions", 0): (5, 9), ("hits", 0): (3, 7)}
    # Ahead or level (a worker that wrote and was not committed): nothing to read again.
    assert store.expected == {
        ("sessions", 0): 5,
        ("hits", 0): 3,
        ("sessions", 1): 50,
        ("hits", 1): 70,
    }
    assert (await _applied(store, 0))[b"hits"] == b"3"


async def test_the_check_never_rewinds_before_the_first_record_kafka_still_has(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.r.hset(store.layout.applied(0), mapping={"sessions": "5", "hits": "5"})
    recovery = Recovery(StreamSettings(), store, {"sessions": "s", "hits": "h"})

    async def bounds(wanted: list) -> dict:
        return {key: (8, 8) for key in wanted}  # retention deleted offsets 0..7

    monkeypatch.setattr(recovery, "bounds", bounds)
    assert await recovery.check({("sessions", 0): 20, ("hits", 0): 8}) == {("sessions", 0): (8, 20)}


async def test_a_partition_never_processed_owes_nothing(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    recovery = Recovery(StreamSettings(), store, {"sessions": "s", "hits": "h"})

    async def committed(wanted: list) -> dict:
        return {("sessions", 2): None, ("hits", 2): 40}  # a new group; a group at 40

    async def bounds(wanted: list) -> dict:
        return {key: (0, 0) for key in wanted}

    monkeypatch.setattr(recovery, "committed", committed)
    monkeypatch.setattr(recovery, "bounds", bounds)
    rewinds = await recovery.check({("sessions", 2): None, ("hits", 2): None})
    assert rewinds == {("hits", 2): (0, 40)}
    assert await _applied(store, 2) == {b"sessions": b"0", b"hits": b"0"}


async def test_parking_and_releasing_on_a_redis_that_lost_writes_are_refused(
    store: RedisStore,
) -> None:
    from stream.state import ParkedHit

    await store.write([_session("a", 3)], [], offsets={("hits", 3): 10})
    await store.r.delete(store.layout.applied(3))  # Redis forgot
    # A hit parked on top of the loss would be applied out of its order in the rebuild.
    with pytest.raises(RedisLost):
        await store.park([ParkedHit("b", b"h", 3, 11)])
    with pytest.raises(RedisLost):
        await store.release({"a": 3})
    assert not await store.r.exists(store.layout.pending(3, "b"))
    assert await store.r.hget(store.layout.session(3, "a"), "ready") is None
