"""The close sweep's Redis reads cover all of a worker's partitions at once (real Redis)."""

from __future__ import annotations

from stream.state import CloseWrite, RedisStore


async def _open(store: RedisStore, partition: int, sessions: dict[str, float]) -> None:
    await store.r.zadd(store.layout.open_sessions(partition), sessions)


async def test_due_sessions_come_by_partition_up_to_each_partitions_time(
    store: RedisStore,
) -> None:
    await _open(store, 0, {"a": 100.0, "b": 300.0})
    await _open(store, 1, {"c": 150.0, "d": 250.0})
    await _open(store, 2, {"e": 50.0})
    due = await store.due({0: 200.0, 1: 260.0, 2: 10.0}, limit=100)
    assert due == {0: [("a", 100.0)], 1: [("c", 150.0), ("d", 250.0)]}
    assert await store.open_count([0, 1, 2]) == 5
    assert await store.open_count([]) == 0


async def test_one_round_closes_at_most_the_limit_over_all_partitions(store: RedisStore) -> None:
    await _open(store, 0, {f"p0-{i}": float(i) for i in range(3)})
    await _open(store, 1, {f"p1-{i}": float(i) for i in range(3)})
    due = await store.due({0: 10.0, 1: 10.0}, limit=4)
    assert sum(len(rows) for rows in due.values()) == 4
    assert [sid for sid, _ in due[0]] == ["p0-0", "p0-1", "p0-2"]
    assert [sid for sid, _ in due[1]] == ["p1-0"]


async def test_finishing_a_close_takes_sessions_out_of_every_partitions_open_set(
    store: RedisStore,
) -> None:
    await _open(store, 0, {"a": 1.0, "b": 2.0})
    await _open(store, 3, {"c": 1.0})
    await store.finish_close({0: ["a"], 3: ["c"], 4: []})
    assert await store.due({0: 10.0, 3: 10.0}, limit=10) == {0: [("b", 2.0)]}


async def test_a_session_is_closed_as_its_final_score_is_stored(store: RedisStore) -> None:
    # The hits agent may run between storing and finishing: a hit then is late.
    await _open(store, 2, {"a": 1.0})
    await store.prepare_close([CloseWrite("a", b"{}", "session_end:", None, partition=2)])
    states, _ = await store.read({"a": 2})
    assert states["a"].closed
    # Still open until finished: a crash here finds it and publishes its stored copy.
    assert await store.due({2: 10.0}, limit=10) == {2: [("a", 1.0)]}
    assert await store.stored_scores([("a", 2, "session_end:")]) == [b"{}"]
    # Its partition's keys hold it; another partition's do not.
    assert await store.stored_scores([("a", 0, "session_end:")]) == [None]
    assert not (await store.read({"a": 0}))[0]["a"].closed


async def test_a_close_racing_the_states_expiry_leaves_nothing_without_a_ttl(
    store: RedisStore,
) -> None:
    state = store.layout.session(0, "gone")
    live = store.layout.session(0, "live")
    await store.r.hset(live, "hs", "x")
    await store.r.expire(live, 60)
    # "gone" expired between the sweep's read and its store step.
    await store.prepare_close(
        [
            CloseWrite("gone", b"{}", "session_end:", b"{}"),
            CloseWrite("live", b"{}", "session_end:", None),
        ]
    )
    assert 0 < await store.r.ttl(state) <= store.ttl
    assert 0 < await store.r.ttl(live) <= 60  # a live state's TTL is left as it was


async def test_watermarks_are_read_for_several_partitions_in_one_call(store: RedisStore) -> None:
    await store.r.hset(
        store.layout.watermark(1),
        mapping={"sessions_event_ms": 10, "sessions_wall_ms": 20, "hits_event_ms": 5},
    )
    marks = await store.watermarks([0, 1])
    assert marks == {0: {}, 1: {"sessions": (10.0, 20.0)}}
