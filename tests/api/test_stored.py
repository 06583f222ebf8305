"""Where the API finds what the worker stored: the recorded layout, a session's partition."""

import pytest
from fakes import FakeRedis

from api import stored
from contracts import keys


def test_candidates_start_with_the_default_partition_and_cover_every_one() -> None:
    layout = keys.Layout(keys.KEY_PREFIX, 6)
    for sid in ("a", "abc", "1234567890.1637753792", "x" * 200):
        order = stored.candidates(layout, sid)
        assert order[0] == layout.partition_of(sid) == keys.kafka_partition(sid.encode(), 6)
        assert sorted(order) == list(range(6))


async def test_find_reads_the_default_partition_alone_when_the_session_is_there() -> None:
    redis = FakeRedis()
    layout = keys.Layout(keys.KEY_PREFIX, 6)
    part = redis.store_session(layout, "abc", {"latest": b"{}"})
    assert await stored.find(redis, layout, "abc", "latest") == (part, b"{}")
    assert redis.calls == [("hget", layout.session(part, "abc"))]


@pytest.mark.parametrize("offset", [1, 2, 5])
async def test_find_falls_back_to_every_other_partition(offset) -> None:
    redis = FakeRedis()
    layout = keys.Layout(keys.KEY_PREFIX, 6)
    where = (layout.partition_of("abc") + offset) % 6
    redis.store_session(layout, "abc", {"latest": b"{}"}, partition=where)
    assert await stored.find(redis, layout, "abc", "latest") == (where, b"{}")
    assert sorted(key for _, key in redis.calls) == sorted(
        layout.session(p, "abc") for p in range(6)
    )


async def test_find_looks_for_the_field_asked() -> None:
    redis = FakeRedis()
    layout = keys.Layout(keys.KEY_PREFIX, 3)
    redis.store_session(layout, "abc", {"row": b"r"})  # a session without a score yet
    assert await stored.find(redis, layout, "abc", "latest") is None
    assert await stored.find(redis, layout, "abc", "row") is not None


@pytest.mark.parametrize("partitions", [1, 4])
async def test_find_gives_none_for_a_session_nowhere(partitions) -> None:
    redis = FakeRedis()
    layout = keys.Layout(keys.KEY_PREFIX, partitions)
    redis.store_session(layout, "other", {"latest": b"{}"})
    assert await stored.find(redis, layout, "abc", "latest") is None
    assert len(redis.calls) == partitions


async def test_no_layout_until_the_worker_records_one() -> None:
    redis = FakeRedis()
    layouts = stored.Layouts("scorer")
    assert await layouts.get(redis) is None
    redis.record_layout(4)
    layout = await layouts.get(redis)  # read again at once while there is none
    assert layout is not None and (layout.prefix, layout.partitions) == ("scorer", 4)


@pytest.mark.parametrize(
    "recorded",
    [
        {b"version": str(keys.LAYOUT_VERSION - 1).encode(), b"partitions": b"4"},
        {b"version": str(keys.LAYOUT_VERSION + 1).encode(), b"partitions": b"4"},
        {b"partitions": b"4"},
        {b"version": str(keys.LAYOUT_VERSION).encode()},
        {b"version": str(keys.LAYOUT_VERSION).encode(), b"partitions": b""},
    ],
)
async def test_a_layout_of_another_version_or_incomplete_is_not_used(recorded) -> None:
    redis = FakeRedis()
    redis.hashes[keys.layout_key("scorer")] = recorded
    assert await stored.Layouts("scorer").get(redis) is None


async def test_the_layout_is_read_under_its_prefix() -> None:
    redis = FakeRedis()
    redis.record_layout(4, prefix="other")
    assert await stored.Layouts("scorer").get(redis) is None
    layout = await stored.Layouts("other").get(redis)
    assert layout is not None and layout.session(0, "s").startswith("other:{")


async def test_the_layout_is_kept_for_a_while_then_read_again(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(stored.time, "monotonic", lambda: clock[0])
    redis = FakeRedis()
    redis.record_layout(4)
    layouts = stored.Layouts("scorer")
    first = await layouts.get(redis)
    redis.record_layout(8)  # the input topics grew
    clock[0] += stored.LAYOUT_REFRESH_S / 2
    assert await layouts.get(redis) is first
    assert [c for c in redis.calls if c[0] == "hgetall"] == [("hgetall", keys.layout_key())]
    clock[0] += stored.LAYOUT_REFRESH_S
    grown = await layouts.get(redis)
    assert grown is not None and grown.partitions == 8
    clock[0] += stored.LAYOUT_REFRESH_S
    assert await layouts.get(redis) is grown  # the same count: the same layout
    del redis.hashes[keys.layout_key()]
    clock[0] += stored.LAYOUT_REFRESH_S
    assert await layouts.get(redis) is None  # the record is gone: nothing is found
