"""The dashboard's aggregates, written by the store's batch writes, read by the API.

The aggregates live in Lua inside the batch write, so these run against the real Redis
of the local stack (`make test` starts it).
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from api.dashboard import Window, read_dashboard
from contracts.dashboard import HOT_ANCHOR, HOT_MAX, HOUR_MS
from contracts.history import history_entry, trajectory
from features.hits import STATE_INDEX, empty_state
from stream.dashboard import channel_values
from stream.state import CloseWrite, HitWrite, RedisStore, SessionWrite
from tests.stream.conftest import as_on_a_cluster

pytestmark = pytest.mark.redis

T0 = 1_640_000_000_000.0  # 2021-12-20 11:33:20 UTC, in ms


def _row(medium: str, source: str = "src", city: str | None = "Moscow") -> dict:
    return {
        "utm_medium": medium,
        "utm_source": source,
        "utm_campaign": None,
        "device_category": "mobile",
        "geo_city": city,
    }


def _start(sid: str, p: float, start_ms: float, row: dict, partition: int = 0) -> SessionWrite:
    return SessionWrite(
        session_id=sid,
        client_id="c",
        start="2021-12-20T11:33:20+00:00",
        vector=np.zeros(3, dtype=np.float32),
        score_json=b"{}",
        history_field="session_start:",
        history=history_entry(p, "v1", True, 0),
        event_ms=start_ms,
        probability=p,
        channel=channel_values(row),
        partition=partition,
    )


def _hits(
    sid: str,
    applied: list[int],
    points: list[float],
    converted: bool = False,
    *,
    partition: int = 0,
    closed: bool = False,
) -> HitWrite:
    """The batch's hits ``applied`` scored ``points`` (the last ones, if fewer).

    ``closed``: hits read after the session's close, as the processor writes them.
    """
    state = empty_state()
    state[STATE_INDEX["hits"]] = len(applied)
    scored = applied[-len(points) :]
    return HitWrite(
        session_id=sid,
        state=state,
        applied=applied,
        scores=[(f"hit:{n}", b"{}") for n in scored],
        event_ms=T0,
        outcome=b'{"outcome":"converted"}' if converted else None,
        probability=points[-1],
        entries=[history_entry(p, "v1", None, 0) for p in points],
        partition=partition,
        closed=closed,
    )


def _scores(session: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """A session hash's score entries (fields ``trigger:hit_number``)."""
    return {name: entry for name, entry in session.items() if b":" in name}


def _medium(data: dict, value: str) -> dict:
    rows = {r["value"]: r for r in data["channels"]["utm_medium"]}
    return rows[value]


async def _data(store: RedisStore, window: Window = Window.all) -> dict:
    return await read_dashboard(store.r, store.layout, window, hot=10)


async def test_sessions_count_once_per_channel_with_their_start_probability(
    store: RedisStore,
) -> None:
    await store.write(
        [_start("a", 0.10, T0, _row("cpc")), _start("b", 0.02, T0, _row("cpc"))],
        [],
        events=2,
    )
    await store.write([_start("c", 0.05, T0, _row("organic", city=None))], [], events=1)
    rates = (await _data(store))["now"]
    assert rates["events_per_minute"][-1] + rates["events_per_minute"][-2] == 3
    assert rates["scores_per_minute"][-1] + rates["scores_per_minute"][-2] == 3
    # The same row again (a redelivered batch) changes no aggregate.
    await store.write([_start("a", 0.10, T0, _row("cpc"))], [])

    d = await _data(store)
    cpc = _medium(d, "cpc")
    assert cpc["sessions"] == 2
    assert cpc["expected"] == pytest.approx(0.12)
    assert cpc["mean_probability"] == pytest.approx(0.06)
    assert cpc["observed"] == 0 and cpc["observed_to_expected"] == 0.0
    assert _medium(d, "organic")["sessions"] == 1
    assert d["totals"]["sessions"] == 3
    assert d["now"]["active_sessions"] == 3
    assert d["now"]["event_time_ms"] == T0
    assert [h["session_id"] for h in d["hot"]] == ["a", "c", "b"]
    assert d["hot"][1]["geo_city"] == "(none)"
    campaigns = {r["value"] for r in d["channels"]["utm_campaign"]}
    assert campaigns == {"(none)"}


async def test_a_conversion_counts_once_and_leaves_the_hot_list(store: RedisStore) -> None:
    await store.write([_start("a", 0.10, T0, _row("cpc")), _start("b", 0.02, T0, _row("cpc"))], [])
    await store.write([], [_hits("b", [1, 2], [0.30, 0.40])])
    d = await _data(store)
    assert [h["session_id"] for h in d["hot"]] == ["b", "a"]
    b = d["hot"][0]
    assert b["probability"] == pytest.approx(0.40)
    assert b["trajectory"] == pytest.approx([0.02, 0.30, 0.40])
    assert b["hits"] == 2

    converting = _hits("b", [1, 2, 3], [0.9], converted=True)
    await store.write([], [converting])
    await store.write([], [converting])  # redelivered
    d = await _data(store)
    assert [h["session_id"] for h in d["hot"]] == ["a"]
    cpc = _medium(d, "cpc")
    assert cpc["observed"] == 1
    assert cpc["expected"] == pytest.approx(0.12)  # start probabilities: hits do not move it
    assert cpc["observed_to_expected"] == pytest.approx(1 / 0.12)
    assert d["now"]["active_sessions"] == 2  # converted, still open


async def test_a_hits_batch_whose_first_score_is_stored_changes_nothing(
    store: RedisStore,
) -> None:
    # The session hash takes a batch only with its first new score: a batch written
    # again (a redelivery), or an earlier one, leaves state, latest score and hot set.
    await store.write([_start("a", 0.10, T0, _row("cpc"))], [])
    first = _hits("a", [1, 2, 3], [0.2, 0.3, 0.5])
    await store.write([], [first])
    key = store.layout.session(0, "a")
    before = await store.r.hgetall(key)
    # ``latest`` names the latest score's field
    assert before[b"latest"] == b"hit:3" and b"hits" not in before
    again = _hits("a", [1, 2, 3], [0.9, 0.9, 0.9])
    again.state[0] += 100  # a state that would show if it were written
    earlier = _hits("a", [1], [0.2])
    for batch in (again, earlier):
        await store.write([], [batch])
        assert await store.r.hgetall(key) == before
        d = await _data(store)
        assert [h["session_id"] for h in d["hot"]] == ["a"]
        assert d["hot"][0]["probability"] == pytest.approx(0.5)
        assert d["hot"][0]["hits"] == 3
        assert d["hot"][0]["trajectory"] == pytest.approx([0.1, 0.2, 0.3, 0.5])
    states, applied = await store.read({"a": 0}, [("a", 3), ("a", 4)])
    assert states["a"].state.tolist() == first.state.tolist() and applied == [True, False]
    latest = orjson.loads(states["a"].latest or b"{}")  # made again from its entry
    assert (latest["trigger"], latest["hit_number"], latest["session_id"]) == ("hit", 3, "a")
    assert latest["probability"] == pytest.approx(0.5)
    # The next batch, with a score not stored yet, applies.
    await store.write([], [_hits("a", [4], [0.6])])
    assert (await _data(store))["hot"][0]["probability"] == pytest.approx(0.6)


async def test_closing_takes_a_session_out_once(store: RedisStore) -> None:
    await store.write([_start("a", 0.10, T0, _row("cpc")), _start("b", 0.02, T0, _row("cpc"))], [])
    close = CloseWrite("a", b"{}", "session_end:", None, history_entry(0.07, "v1", 0, 0))
    await store.prepare_close([close])
    await store.prepare_close([close])  # after a crash, closed again
    d = await _data(store)
    assert [h["session_id"] for h in d["hot"]] == ["b"]
    assert d["now"]["active_sessions"] == 1
    # The final score is the last point of its trajectory.
    history = _scores(await store.r.hgetall(store.layout.session(0, "a")))
    assert trajectory(history, 30) == pytest.approx([0.10, 0.07])
    await store.finish_close({0: ["a"]})
    d = await _data(store)
    assert [h["session_id"] for h in d["hot"]] == ["b"]
    assert d["now"]["active_sessions"] == 1
    # A late hit after the close (the processor writes it closed: see
    # test_session_gate) updates nothing on the hot list or the open count.
    await store.write([], [_hits("a", [1], [0.8], closed=True)])
    d = await _data(store)
    assert [h["session_id"] for h in d["hot"]] == ["b"]
    assert d["now"]["active_sessions"] == 1


async def test_windows_count_sessions_by_their_start_in_stream_time(store: RedisStore) -> None:
    await store.write([_start("old", 0.01, T0 - 30 * HOUR_MS, _row("cpc"))], [])
    await store.write([_start("day", 0.02, T0 - 3 * HOUR_MS, _row("cpc"))], [])
    await store.write([_start("now", 0.04, T0, _row("cpc"))], [])
    counts = {}
    for window in Window:
        d = await _data(store, window)
        counts[window.value] = _medium(d, "cpc")["sessions"]
        assert d["window"] == window.value
    assert counts == {"hour": 1, "day": 2, "all": 3}

    d = await _data(store, Window.all)
    chart = d["chart"]
    assert len(chart) == 30 and d["chart_bucket_ms"] == 24 * HOUR_MS
    assert sum(b["sessions"] for b in chart) == 3
    assert sum(b["expected"] for b in chart) == pytest.approx(0.07)
    assert chart[-1]["start_ms"] <= T0 < chart[-1]["start_ms"] + 24 * HOUR_MS
    hourly = (await _data(store, Window.day))["chart"]
    assert len(hourly) == 24 and sum(b["sessions"] for b in hourly) == 2


async def test_nothing_there_reads_as_empty(store: RedisStore) -> None:
    d = await _data(store)
    assert d["hot"] == [] and d["totals"]["sessions"] == 0
    assert d["now"]["consumer_lag"] is None and d["now"]["event_time_ms"] is None
    assert all(rows == [] for rows in d["channels"].values())


async def test_a_large_batch_sums_its_channels_and_keeps_the_hottest(store: RedisStore) -> None:
    # One call sums its sessions' increments per bucket and channel before writing them,
    # and trims the hot list once, at the end.
    n = HOT_MAX + 10
    starts = [
        _start(f"s{i:03d}", (i + 1) / 1000, T0 + i, _row("cpc" if i % 3 else "organic"))
        for i in range(n)
    ]
    await store.write(starts, [], events=n)
    d = await read_dashboard(store.r, store.layout, Window.all, hot=n)
    assert d["totals"]["sessions"] == n
    cpc = [i for i in range(n) if i % 3]
    assert _medium(d, "cpc")["sessions"] == len(cpc)
    assert _medium(d, "cpc")["expected"] == pytest.approx(sum((i + 1) / 1000 for i in cpc))
    assert _medium(d, "organic")["sessions"] == n - len(cpc)
    assert d["now"]["active_sessions"] == n
    assert d["now"]["event_time_ms"] == T0 + n - 1
    hot = [h["session_id"] for h in d["hot"]]
    assert hot == [f"s{i:03d}" for i in range(n - 1, 9, -1)]


async def test_a_full_hot_set_takes_only_sessions_at_or_above_its_lowest(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stream import dashboard

    monkeypatch.setattr(dashboard, "HOT_MAX", 3)
    small = RedisStore(store.r, prefix=store.prefix, ttl_s=600, retries=2)
    row = _row("cpc")
    await small.write([_start(s, p, T0, row) for s, p in (("a", 0.5), ("b", 0.4), ("c", 0.3))], [])
    hot = store.layout.dash(0) + ":hot"

    async def members() -> list[bytes]:
        return [m for m in await store.r.zrevrange(hot, 0, -1) if m != HOT_ANCHOR.encode()]

    assert await members() == [b"a", b"b", b"c"]
    # Below the lowest (0.3): "d" stays out, "b" falling there leaves; "e" starts low
    # and rises in the same call: its last probability counts.
    await small.write(
        [_start("d", 0.1, T0, row), _start("e", 0.05, T0, row)],
        [_hits("b", [1], [0.2]), _hits("e", [1], [0.45])],
    )
    assert await members() == [b"a", b"e", b"c"]
    await small.write([], [_hits("c", [1], [0.3])])  # at the lowest: it stays
    assert await members() == [b"a", b"e", b"c"]


async def test_buckets_hold_integer_sums(store: RedisStore) -> None:
    await store.write([_start("a", 0.1234567, T0, _row("cpc"))], [])
    bucket = f"{store.layout.dash(0)}:all"
    fields = await store.r.hgetall(bucket)
    assert fields[b"n"] == b"1" and fields[b"pu"] == b"123457"  # millionths, rounded
    assert all(v.lstrip(b"-").isdigit() for v in fields.values())  # integers only
    # The next write adds to what the bucket holds, field by field.
    await store.write(
        [_start("b", 0.5, T0, _row("cpc")), _start("c", 0.25, T0, _row("organic"))], []
    )
    fields = await store.r.hgetall(bucket)
    assert fields[b"n"] == b"3" and fields[b"pu"] == b"873457"
    assert fields[b"n|utm_medium|cpc"] == b"2" and fields[b"pu|utm_medium|cpc"] == b"623457"
    assert fields[b"n|utm_medium|organic"] == b"1"
    assert all(v.lstrip(b"-").isdigit() for v in fields.values())
    d = await _data(store)
    assert d["totals"]["expected"] == pytest.approx(0.873457)
    assert _medium(d, "cpc")["expected"] == pytest.approx(0.623457)


async def _start_on_partitions_0_and_4(store: RedisStore) -> None:
    """Sessions a (cpc, 0.10) on partition 0, b (cpc, 0.30) and c (organic, Kazan, 0.05)
    on partition 4, in one write."""
    await store.write(
        [
            _start("a", 0.10, T0, _row("cpc"), partition=0),
            _start("b", 0.30, T0 + 5, _row("cpc"), partition=4),
            _start("c", 0.05, T0 - 5, _row("organic", city="Kazan"), partition=4),
        ],
        [],
        events={0: 1, 4: 2},
    )


async def test_on_one_redis_the_partitions_share_one_dashboard(store: RedisStore) -> None:
    layout = store.layout
    await _start_on_partitions_0_and_4(store)
    shared = await store.r.hgetall(f"{layout.dash(0)}:all")
    assert shared[b"n"] == b"3" and shared[b"n|utm_medium|cpc"] == b"2"
    assert await store.r.hget(f"{layout.dash(0)}:meta", "active") == b"3"
    for p in range(1, 6):
        assert not await store.r.exists(f"{layout.dash(p)}:all", f"{layout.dash(p)}:meta")
    d = await _data(store)
    assert d["totals"]["sessions"] == 3 and d["now"]["event_time_ms"] == T0 + 5
    # The hot list finds each session under its own partition.
    hot = d["hot"]
    assert [h["session_id"] for h in hot] == ["b", "a", "c"]
    assert hot[2]["geo_city"] == "Kazan" and hot[0]["started_ms"] == T0 + 5
    await store.write([], [_hits("b", [1], [0.9], converted=True, partition=4)])
    assert (await store.r.hgetall(f"{layout.dash(0)}:all"))[b"c"] == b"1"
    assert [h["session_id"] for h in (await _data(store))["hot"]] == ["a", "c"]


async def test_on_a_cluster_a_masters_call_sums_into_its_lowest_partitions_share(
    store: RedisStore,
) -> None:
    # Two masters: partitions 0, 2, 4 on one, 1, 3, 5 on the other.
    store, masters = as_on_a_cluster(store)
    layout = store.layout
    await _start_on_partitions_0_and_4(store)
    await store.write([_start("d", 0.20, T0 + 9, _row("cpc"), partition=1)], [], events={1: 1})
    # One call for partitions 0 and 4: their sums in partition 0's share, the hot sets
    # in each partition's own.
    zero, four, one = [await store.r.hgetall(f"{layout.dash(p)}:all") for p in (0, 4, 1)]
    assert zero[b"n"] == b"3" and zero[b"n|utm_medium|cpc"] == b"2"
    assert zero[b"n|utm_medium|organic"] == b"1"
    assert four == {} and one[b"n"] == b"1"
    metas = [await store.r.hgetall(f"{layout.dash(p)}:meta") for p in (0, 1)]
    assert [m[b"active"] for m in metas] == [b"3", b"1"]
    assert [float(m[b"now_ms"]) for m in metas] == [T0 + 5, T0 + 9]
    assert not await store.r.exists(f"{layout.dash(4)}:meta")
    hot = {p: await store.r.zrange(f"{layout.dash(p)}:hot", 0, -1) for p in (0, 1, 4)}
    assert b"a" in hot[0] and b"d" in hot[1] and {b"b", b"c"} <= set(hot[4])
    for p in (2, 3, 5):
        assert not await store.r.exists(f"{layout.dash(p)}:all", f"{layout.dash(p)}:hot")
    d = await _data(store)
    assert d["totals"]["sessions"] == 4 and d["now"]["active_sessions"] == 4
    assert d["now"]["event_time_ms"] == T0 + 9  # the latest of the shares'
    assert sum(d["now"]["events_per_minute"][-2:]) == 4
    assert _medium(d, "cpc")["sessions"] == 3
    assert _medium(d, "cpc")["expected"] == pytest.approx(0.60)
    # The hot list merges the partitions', each session read under its own partition.
    hot_list = d["hot"]
    assert [h["session_id"] for h in hot_list] == ["b", "d", "a", "c"]
    assert hot_list[3]["geo_city"] == "Kazan" and hot_list[3]["started_ms"] == T0 - 5

    # A conversion counts in the call's share, and leaves its partition's hot set; a
    # close takes a session off the count.
    await store.write([], [_hits("b", [1], [0.9], converted=True, partition=4)])
    await store.prepare_close([CloseWrite("a", b"{}", "session_end:", None, partition=0)])
    assert (await store.r.hgetall(f"{layout.dash(0)}:all"))[b"c"] == b"1"
    assert b"b" not in await store.r.zrange(f"{layout.dash(4)}:hot", 0, -1)
    assert await store.r.hget(f"{layout.dash(0)}:meta", "active") == b"2"
    d = await _data(store)
    assert [h["session_id"] for h in d["hot"]] == ["d", "c"]
    assert d["totals"]["observed"] == 1 and d["now"]["active_sessions"] == 3
    assert _medium(d, "cpc")["observed"] == 1


async def test_on_a_cluster_a_call_whose_reply_is_lost_goes_again_by_the_new_slot_map(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, masters = as_on_a_cluster(store)
    layout = store.layout
    lane = masters.lanes[0]
    real_send = lane.send
    failed = []

    async def send_and_lose(script, keys, args):  # type: ignore[no-untyped-def]
        if not failed:  # the first call's connection breaks; meanwhile partition 4 moves
            failed.append(len(args) - 2)
            masters.where[4] = 1
            raise ConnectionError("the master went away")
        return await real_send(script, keys, args)

    monkeypatch.setattr(lane, "send", send_and_lose)
    sent: list[int] = []
    for other in masters.lanes[1:]:
        real = other.send

        async def counted(script, keys, args, real=real):  # type: ignore[no-untyped-def]
            sent.append(len(args) - 2)
            return await real(script, keys, args)

        monkeypatch.setattr(other, "send", counted)
    await _start_on_partitions_0_and_4(store)
    assert failed == [2]  # partitions 0 and 4 went as one call, and it failed
    assert sent == [1]  # partition 4's part went again alone, to its new master
    # whose calls sum into the share of partition 1, the lowest it holds
    assert (await store.r.hgetall(f"{layout.dash(0)}:all"))[b"n"] == b"1"
    assert (await store.r.hgetall(f"{layout.dash(1)}:all"))[b"n"] == b"2"
    assert not await store.r.exists(f"{layout.dash(4)}:all")
    d = await _data(store)
    assert d["totals"]["sessions"] == 3 and d["now"]["active_sessions"] == 3
    assert [h["session_id"] for h in d["hot"]] == ["b", "a", "c"]


async def test_made_up_channel_values_beyond_the_cap_count_as_other(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stream import dashboard

    # A bucket holds its totals (n, pu) and n and pu per dimension and value: the first
    # session makes 8 fields, each later one with a new source 2 more. With 14 fields
    # the bucket is full after four sources.
    monkeypatch.setattr(dashboard, "DASH_BUCKET_FIELDS_MAX", 14)
    capped = RedisStore(store.r, prefix=store.prefix, ttl_s=600, retries=2)
    sources = [f"src{i}" for i in range(8)]
    for i, source in enumerate(sources):  # one write each: the cap is looked at per call
        row = _row("cpc", source=source)
        row["utm_campaign"] = "camp"
        await capped.write([_start(f"s{i}", 0.01, T0, row)], [])
    # A value the bucket names already stays named; a new one is "other".
    await capped.write([_start("again", 0.01, T0, _row("cpc", source="src1"))], [])
    await capped.write([_start("new", 0.01, T0, _row("cpc", source="zzz"))], [])
    # Conversions count where their session's start counted.
    await capped.write(
        [], [_hits("s1", [1], [0.5], converted=True), _hits("s7", [1], [0.5], converted=True)]
    )
    d = await _data(store)
    rows = {r["value"]: r for r in d["channels"]["utm_source"]}
    assert set(rows) == {"src0", "src1", "src2", "src3", "(other)"}
    assert rows["(other)"]["sessions"] == 5  # src4 to src7, and zzz
    assert rows["src1"]["sessions"] == 2 and rows["src1"]["observed"] == 1
    assert rows["(other)"]["observed"] == 1  # s7 came after the bucket filled
    assert d["totals"]["sessions"] == 10
    # No bucket took a value after it was full; conversions only add to values it has.
    r = store.r
    for key in [k async for k in r.scan_iter(match=f"{store.layout.dash(0)}:*")]:
        if await r.type(key) == b"hash":
            fields = [f.decode() for f in await r.hkeys(key)]
            seen = {f.split("|", 2)[2] for f in fields if f.count("|") == 2}
            assert seen <= {"cpc", "camp", "(none)", "src0", "src1", "src2", "src3", "(other)"}
            assert len(fields) <= 2 * 14, key
