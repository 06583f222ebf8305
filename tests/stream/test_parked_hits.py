"""Hits read before their session row: parked in Redis, applied when the row is released.

The processor runs here on the real Redis of the local stack with the test model; Kafka
is not involved (the worker's own tests cover the whole path).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from artifact import load_model
from contracts import keys, topics
from stream.processor import Processor, Record
from stream.replay import build_events
from stream.state import ParkedHit, RedisStore

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def sessions_and_hits(data_dir: Path) -> tuple[list[bytes], dict[str, list[bytes]]]:
    """Ten sessions with at least three hits each, and their hits."""
    events = build_events(data_dir, limit_sessions=400)
    hits: dict[str, list[bytes]] = defaultdict(list)
    for topic, key, value in events:
        if topic == topics.HITS:
            hits[key.decode()].append(value)
    rows = [v for t, k, v in events if t == topics.SESSIONS and len(hits.get(k.decode(), [])) >= 3][
        :10
    ]
    return rows, {orjson.loads(r)["session_id"]: hits[orjson.loads(r)["session_id"]] for r in rows}


def _records(topic: str, values: list[bytes], first_offset: int) -> list[Record]:
    return [
        Record(value=v, topic=topic, partition=3, offset=first_offset + i, timestamp_ms=1000.0 + i)
        for i, v in enumerate(values)
    ]


async def test_packed_entries_keep_where_the_hit_was_read(store: RedisStore) -> None:
    hit = ParkedHit("s1", b'{"session_id":"s1"}', partition=5, offset=1234, timestamp_ms=99.5)
    assert ParkedHit.unpack("s1", hit.pack()) == hit
    # An entry written as the bare hit (an older worker's layout) is still a hit.
    bare = ParkedHit.unpack("s1", b'{"session_id":"s1","hit_number":1}')
    assert bare.raw == b'{"session_id":"s1","hit_number":1}'
    assert (bare.partition, bare.offset) == (-1, -1)


async def test_park_is_refused_once_the_session_is_released(store: RedisStore) -> None:
    a, b = ParkedHit("a", b"1", 0, 1), ParkedHit("b", b"2", 0, 2)
    assert await store.park([a, b, ParkedHit("a", b"3", 0, 3)]) == [True, True, True]
    # A session whose state is not in Redis (lost, or expired) is not released.
    assert await store.release({"a": 0}) == []
    assert await store.park([ParkedHit("a", b"x", 0, 9)]) == [True]
    await store.r.lrem(store.layout.pending(0, "a"), 1, ParkedHit("a", b"x", 0, 9).pack())
    row = keys.StoredRow("2021-11-24T14:36:32+03:00", "c", b"", 0.0, ("(none)",) * 5)
    for sid in ("a", "b"):
        await store.r.hset(store.layout.session(0, sid), keys.ROW_FIELD, keys.pack_row(row))
    released = await store.release({"a": 0})
    assert [(h.session_id, h.raw, h.offset) for h in released] == [("a", b"1", 1), ("a", b"3", 3)]
    # "a" is ready now: its hits are no longer parked, "b" still waits.
    assert await store.park([ParkedHit("a", b"4", 0, 4), ParkedHit("b", b"5", 0, 5)]) == [
        False,
        True,
    ]
    await store.forget_pending({"a": 0})
    assert await store.release({"a": 0}) == []
    assert [h.raw for h in await store.release({"b": 0})] == [b"2", b"5"]


async def test_a_session_parks_and_releases_under_its_own_partition(store: RedisStore) -> None:
    # The same session id on two partitions: two sessions, each with its own keys.
    assert await store.park([ParkedHit("a", b"on 1", 1, 1), ParkedHit("a", b"on 4", 4, 1)]) == [
        True,
        True,
    ]
    row = keys.StoredRow("2021-11-24T14:36:32+03:00", "c", b"", 0.0, ("(none)",) * 5)
    await store.r.hset(store.layout.session(4, "a"), keys.ROW_FIELD, keys.pack_row(row))
    assert await store.release({"a": 1}) == []  # no row on partition 1
    assert [(h.raw, h.partition) for h in await store.release({"a": 4})] == [(b"on 4", 4)]
    assert await store.park([ParkedHit("a", b"again", 1, 2)]) == [True]
    await store.forget_pending({"a": 4})
    assert await store.r.llen(store.layout.pending(1, "a")) == 2
    assert not await store.r.exists(store.layout.pending(4, "a"))


async def test_hits_before_their_session_are_applied_when_it_is_released(
    store: RedisStore, model_path: Path, sessions_and_hits: tuple[list[bytes], dict]
) -> None:
    rows, hits = sessions_and_hits
    processor = Processor(load_model(model_path), store, hits_topic="t.hits")
    early = [v for sid in hits for v in hits[sid]]
    out = await processor.hits(_records("t.hits", early, 100))
    assert out.parked == len(early)
    assert out.scores == []

    started = await processor.sessions(_records("t.sessions", rows, 0))
    assert len(started.scores) == len(rows)
    parked = await processor.release(started.released)
    # Every parked hit comes back with where it was read, in the order it was read.
    assert [(r.topic, r.partition, r.offset) for r in parked] == [
        ("t.hits", 3, 100 + i) for i in range(len(early))
    ]
    applied = await processor.hits(parked)
    assert applied.parked == 0
    got = {
        (orjson.loads(p)["session_id"], orjson.loads(p)["hit_number"]) for _, p in applied.scores
    }
    want = {(sid, orjson.loads(v)["hit_number"]) for sid in hits for v in hits[sid]}
    assert got == want

    # After a crash before forget_pending the row is delivered again: the same hits are
    # released again and change nothing; their stored scores are published again.
    again = await processor.sessions(_records("t.sessions", rows, 0))
    assert again.duplicates == len(rows)
    repeat = await processor.hits(await processor.release(again.released))
    assert repeat.duplicates == len(early)
    assert sorted(repeat.scores) == sorted(applied.scores)
    assert started.released == {sid: 3 for sid in hits}
    await processor.forget_pending(started.released)
    assert await processor.release(started.released) == []
    assert not [k async for k in store.r.scan_iter(match=f"{store.layout.base(3)}q:*")]


async def test_a_parked_hit_keeps_its_offset_and_its_kafka_timestamp(
    store: RedisStore, model_path: Path, sessions_and_hits: tuple[list[bytes], dict]
) -> None:
    rows, hits = sessions_and_hits
    processor = Processor(load_model(model_path), store, hits_topic="t.hits")
    sid = orjson.loads(rows[0])["session_id"]
    await processor.hits(_records("t.hits", hits[sid][:1], 700))
    started = await processor.sessions(_records("t.sessions", rows[:1], 0))
    parked = await processor.release(started.released)
    assert [(r.topic, r.offset, r.timestamp_ms) for r in parked] == [("t.hits", 700, 1000.0)]
    out = await processor.hits(parked)
    assert len(out.scores) == 1
    # The end-to-end latency of its score is measured from when it was first read.
    assert out.event_ts_ms == [1000.0]


async def test_a_session_is_not_closed_before_its_parked_hits_are_applied(
    store: RedisStore, model_path: Path, sessions_and_hits: tuple[list[bytes], dict]
) -> None:
    rows, hits = sessions_and_hits
    processor = Processor(load_model(model_path), store, hits_topic="t.hits")
    sid = orjson.loads(rows[0])["session_id"]
    assert (await processor.hits(_records("t.hits", hits[sid], 700))).parked == len(hits[sid])
    started = await processor.sessions(_records("t.sessions", rows[:1], 0))
    # Other sessions' hits, read far ahead of it in event time, gave the partition a mark.
    processor.watermarks[("hits", 3)] = (4e12, time.time() * 1000.0)
    every_session_due = -1e15  # a gap so negative that every open session is past it
    assert await processor.event_time(3) is not None
    # Its start score is not out yet, and its hits wait for that: it stays open.
    upto = await processor.close_horizon({3: frozenset()}, every_session_due)
    held = await processor.close_due(upto)
    assert held.closed == {} and held.scores == []

    # Released (the worker marks it releasing first), its parked hits not applied yet.
    with processor.releasing_sessions(started.released):
        parked = await processor.release(started.released)
        assert (await processor.close_due(upto)).closed == {}
        applied = await processor.hits(parked)
    assert len(applied.scores) == len(hits[sid]) and applied.late == 0
    closing = await processor.close_due(upto)
    assert closing.closed == {3: [sid]}
    assert [orjson.loads(p)["trigger"] for _, p in closing.scores] == ["session_end"]


def test_a_session_stays_releasing_until_its_last_release_ends(store: RedisStore) -> None:
    # A redelivered session row may be released while the original release still runs.
    processor = Processor(cast(Any, None), store)
    with processor.releasing_sessions(["a", "b"]):
        with processor.releasing_sessions(["a"]):
            assert "a" in processor.releasing
        assert "a" in processor.releasing  # the first release is not done yet
    assert "a" not in processor.releasing and "b" not in processor.releasing
    assert not processor.releasing
