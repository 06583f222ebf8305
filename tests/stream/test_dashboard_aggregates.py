"""The dashboard's aggregates, written by the store's batch writes, read by the API.

The aggregates live in Lua inside the batch write, so these run against the real Redis
of the local stack (`make test` starts it).
"""

from __future__ import annotations

import numpy as np
import pytest

from api.dashboard import Window, read_dashboard
from contracts import keys
from contracts.dashboard import HOT_MAX, HOUR_MS, dash_prefix
from contracts.history import history_entry, trajectory
from features.hits import STATE_INDEX, empty_state
from stream.dashboard import channel_values
from stream.state import CloseWrite, HitWrite, RedisStore, SessionWrite

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


def _start(sid: str, p: float, start_ms: float, row: dict) -> SessionWrite:
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
    )


def _hits(sid: str, applied: list[int], points: list[float], converted: bool = False) -> HitWrite:
    """The batch's hits ``applied`` scored ``points`` (the last ones, if fewer)."""
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
    )


def _medium(data: dict, value: str) -> dict:
    rows = {r["value"]: r for r in data["channels"]["utm_medium"]}
    return rows[value]


async def _data(store: RedisStore, window: Window = Window.all) -> dict:
    return await read_dashboard(store.r, store.prefix, window, hot=10)


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


async def test_an_old_score_redelivered_does_not_roll_the_session_back(
    store: RedisStore,
) -> None:
    await store.write([_start("a", 0.10, T0, _row("cpc"))], [])
    await store.write([], [_hits("a", [1, 2, 3], [0.2, 0.3, 0.5])])
    await store.write([], [_hits("a", [1], [0.2])])  # an earlier batch, again
    d = await _data(store)
    assert d["hot"][0]["probability"] == pytest.approx(0.5)
    assert d["hot"][0]["trajectory"] == pytest.approx([0.1, 0.2, 0.3, 0.5])


async def test_closing_takes_a_session_out_once(store: RedisStore) -> None:
    await store.write([_start("a", 0.10, T0, _row("cpc")), _start("b", 0.02, T0, _row("cpc"))], [])
    close = CloseWrite("a", b"{}", "session_end:", None, 0.07, 0, history_entry(0.07, "v1", 0, 0))
    await store.prepare_close([close])
    await store.prepare_close([close])  # after a crash, closed again
    d = await _data(store)
    assert [h["session_id"] for h in d["hot"]] == ["b"]
    assert d["now"]["active_sessions"] == 1
    # The final score is the last point of its trajectory.
    history = await store.r.hgetall(keys.score_history_key("a", store.prefix))
    assert trajectory(history, 30) == pytest.approx([0.10, 0.07])
    await store.finish_close({0: ["a"]})
    d = await _data(store)
    assert [h["session_id"] for h in d["hot"]] == ["b"]
    assert d["now"]["active_sessions"] == 1
    # A late hit after the close updates nothing on the hot list.
    await store.write([], [_hits("a", [1], [0.8])])
    d = await _data(store)
    assert [h["session_id"] for h in d["hot"]] == ["b"]


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
    d = await read_dashboard(store.r, store.prefix, Window.all, hot=n)
    assert d["totals"]["sessions"] == n
    cpc = [i for i in range(n) if i % 3]
    assert _medium(d, "cpc")["sessions"] == len(cpc)
    assert _medium(d, "cpc")["expected"] == pytest.approx(sum((i + 1) / 1000 for i in cpc))
    assert _medium(d, "organic")["sessions"] == n - len(cpc)
    assert d["now"]["active_sessions"] == n
    assert d["now"]["event_time_ms"] == T0 + n - 1
    hot = [h["session_id"] for h in d["hot"]]
    assert hot == [f"s{i:03d}" for i in range(n - 1, 9, -1)]


async def test_buckets_hold_integer_sums_and_older_float_sums_still_count(
    store: RedisStore,
) -> None:
    await store.write([_start("a", 0.1234567, T0, _row("cpc"))], [])
    bucket = f"{dash_prefix(store.prefix)}:all"
    fields = await store.r.hgetall(bucket)
    assert fields[b"n"] == b"1" and fields[b"pu"] == b"123457"  # millionths, rounded
    assert all(v.lstrip(b"-").isdigit() for v in fields.values())  # HINCRBY's integers
    # A bucket written before the millionths kept its probabilities as a float sum.
    await store.r.hset(bucket, mapping={"p": "0.25", "p|utm_medium|cpc": "0.25", "n": "2"})
    d = await _data(store)
    assert d["totals"]["expected"] == pytest.approx(0.373457)
    assert _medium(d, "cpc")["expected"] == pytest.approx(0.373457)
    # The next write adds to such a bucket without trouble.
    await store.write([_start("b", 0.5, T0, _row("cpc"))], [])
    assert (await _data(store))["totals"]["expected"] == pytest.approx(0.873457)


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
    for key in [k async for k in r.scan_iter(match=f"{dash_prefix(store.prefix)}:*")]:
        if await r.type(key) == b"hash":
            fields = [f.decode() for f in await r.hkeys(key)]
            seen = {f.split("|", 2)[2] for f in fields if f.count("|") == 2}
            assert seen <= {"cpc", "camp", "(none)", "src0", "src1", "src2", "src3", "(other)"}
            assert len(fields) <= 2 * 14, key
