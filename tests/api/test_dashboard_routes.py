"""The dashboard's routes: the page, its JSON, its event stream, and the API key.

The worker keeps each input partition's share of the aggregates under that partition's
dashboard prefix (``Layout.dash``); the API adds the partitions up.
"""

import logging
import math
import re
import time

import orjson
import pytest
from fakes import row
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from contracts import keys
from contracts.dashboard import DAY_MS, HOUR_MS, workers_key
from contracts.history import history_entry
from features.hits import STATE_INDEX, empty_state

NOW = 1_640_000_000_000.0
DAY = math.floor(NOW / DAY_MS)
HOUR = math.floor(NOW / HOUR_MS)


def _counters(hits: int) -> bytes:
    """A session's packed counters (``hs``) after ``hits`` hits."""
    state = empty_state()
    state[STATE_INDEX["hits"]] = hits
    return keys.pack_hit_state(state.tolist())


def _session(fake_redis, layout: keys.Layout, partition: int, sid: str, **fields) -> None:
    fake_redis.store_session(layout, sid, {"row": row(), "hs": _counters(1), **fields}, partition)


# The reasons of the hot session's latest score, as the worker stored them.
REASONS = {
    "log_odds": -0.405465,
    "bias": -3.2,
    "top": [
        {"feature": "card_views", "value": 4.0, "contribution": 1.1},
        {"feature": "te_utm_source", "value": "src", "contribution": 0.9},
        {"feature": "screen_width", "value": None, "contribution": -0.3},
        {"feature": "hour", "value": 13.0, "contribution": 0.2},
    ],
    "rest": 0.894535,
}


def _fill(fake_redis) -> keys.Layout:
    """What the worker's Lua would have left: one hour bucket, a hot session, a worker.

    On two partitions: the aggregates on the first, the hot session on the second.
    """
    layout = fake_redis.record_layout(2)
    dash, other = layout.dash(0), layout.dash(1)
    fake_redis.hashes[f"{dash}:meta"] = {b"now_ms": str(NOW).encode(), b"active": b"2"}
    fake_redis.hashes[f"{dash}:all"] = {
        b"n": b"2",
        b"p": b"0.3",
        b"c": b"1",
        b"n|utm_medium|cpc": b"2",
        b"p|utm_medium|cpc": b"0.3",
        b"c|utm_medium|cpc": b"1",
    }
    fake_redis.zsets[f"{other}:hot"] = {b"s1": 0.4}
    # Its channel and start are in its packed row; its trajectory comes from its scores,
    # in session order (hit 10 after hit 2; an entry kept as JSON counts too).
    _session(
        fake_redis,
        layout,
        1,
        "s1",
        row=row(channel=("cpc", "src", "(none)", "mobile", "Moscow"), start_ms=NOW),
        ready="1",
        latest=b"hit:10",
        hs=_counters(3),
        **{
            "hit:10": history_entry(0.4, "v1", None, 0, ("v1#2", -0.1), 2, REASONS, 3),
            "session_start:": history_entry(0.1, "v1", True, 0),
            "hit:2": b'{"probability":0.2,"trigger":"hit"}',
        },
    )
    status = {"lag": 7, "model_version": "v1", "partitions": [0], "at_ms": 1e16}
    fake_redis.hashes[workers_key("scorer")] = {b"host:1": orjson.dumps(status)}
    return layout


def test_the_page_is_served_and_reads_its_stream(client) -> None:
    r = client.get("/dashboard")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script src="/dashboard/static/dashboard.js" defer></script>' in r.text
    script = client.get("/dashboard/static/dashboard.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in script.text and "dashboard/stream" in script.text
    style = client.get("/dashboard/static/dashboard.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")


def test_the_page_has_no_inline_script_or_style(client) -> None:
    # The policy allows neither: anything inline would not run in a browser.
    page = client.get("/dashboard").text
    assert "<script>" not in page and "<style" not in page
    assert re.search(r"<[^>]*\s(style|on[a-z]+)=", page) is None
    assert re.findall(r"<script[^>]*>", page) == [
        '<script src="/dashboard/static/dashboard.js" defer>'
    ]


def test_only_the_pages_own_files_are_served_as_static(client) -> None:
    assert client.get("/dashboard/static/dashboard.html").status_code == 404
    assert client.get("/dashboard/static/..%2Fdashboard.py").status_code == 404


def test_data_shows_channels_hot_sessions_and_workers(client, fake_redis) -> None:
    _fill(fake_redis)
    r = client.get("/dashboard/data", params={"window": "all"})
    assert r.status_code == 200
    d = r.json()
    assert d["channels"]["utm_medium"] == [
        {
            "value": "cpc",
            "sessions": 2,
            "mean_probability": pytest.approx(0.15),
            "expected": pytest.approx(0.3),
            "observed": 1,
            "observed_to_expected": pytest.approx(1 / 0.3),
        }
    ]
    assert d["now"]["active_sessions"] == 2
    assert d["now"]["event_time_ms"] == NOW
    assert d["now"]["consumer_lag"] == 7
    assert d["now"]["model_versions"] == ["v1"]
    assert [h["session_id"] for h in d["hot"]] == ["s1"]
    assert d["hot"][0] == {
        "session_id": "s1",
        "probability": 0.4,
        "utm_medium": "cpc",
        "utm_source": "src",
        "utm_campaign": "(none)",
        "device_category": "mobile",
        "geo_city": "Moscow",
        "hits": 3,
        "started_ms": NOW,
        "trajectory": [0.1, 0.2, 0.4],
        # The latest score's tier, and its top three reasons as the worker published them.
        "tier": "hot",
        "reasons": REASONS["top"][:3],
    }
    # What separates each channel's converters: the served model's card says.
    assert d["drivers"] == client.app.state.card["channel_drivers"]


def test_data_shows_what_separates_each_channels_converters(client, fake_redis) -> None:
    _fill(fake_redis)
    drivers = {"by_dimension": {"utm_medium": {"cpc": [{"feature": "hour", "gap": 0.2}]}}}
    client.app.state.card = dict(client.app.state.card or {}, channel_drivers=drivers)
    d = client.get("/dashboard/data", params={"window": "all"}).json()
    assert d["drivers"] == drivers


def test_data_adds_up_the_partitions(client, fake_redis) -> None:
    layout = fake_redis.record_layout(2)
    a, b = layout.dash(0), layout.dash(1)
    fake_redis.hashes[f"{a}:meta"] = {b"now_ms": str(NOW - 60_000).encode(), b"active": b"2"}
    fake_redis.hashes[f"{b}:meta"] = {b"now_ms": str(NOW).encode(), b"active": b"3"}
    # The channels: cpc on both partitions, organic on one; in the day window's hourly
    # buckets (one each) and in the all-time bucket.
    for name in (f":h:{HOUR}", ":all"):
        fake_redis.hashes[a + name] = {
            b"n": b"3",
            b"pu": b"300000",
            b"c": b"1",
            b"n|utm_medium|cpc": b"3",
            b"pu|utm_medium|cpc": b"300000",
            b"c|utm_medium|cpc": b"1",
            b"n|utm_source|google": b"3",
            b"pu|utm_source|google": b"300000",
        }
        fake_redis.hashes[b + name] = {
            b"n": b"6",
            b"pu": b"700000",
            b"c": b"2",
            b"n|utm_medium|cpc": b"2",
            b"pu|utm_medium|cpc": b"200000",
            b"c|utm_medium|cpc": b"1",
            b"n|utm_medium|organic": b"4",
            b"pu|utm_medium|organic": b"500000",
            b"c|utm_medium|organic": b"1",
        }
    # The chart of the all window: daily buckets, totals only.
    fake_redis.hashes[f"{a}:d:{DAY}"] = {b"n": b"3", b"pu": b"300000", b"c": b"1"}
    fake_redis.hashes[f"{b}:d:{DAY}"] = {b"n": b"5", b"pu": b"700000", b"c": b"2"}
    fake_redis.hashes[f"{b}:d:{DAY - 1}"] = {b"n": b"4", b"pu": b"100000"}
    # Events and scores in this wall-clock minute.
    minute = math.floor(time.time() / 60)
    fake_redis.hashes[f"{a}:rate:{minute}"] = {b"events": b"10", b"scores": b"4"}
    fake_redis.hashes[f"{b}:rate:{minute}"] = {b"events": b"5", b"scores": b"1"}

    for window in ("day", "all"):
        d = client.get("/dashboard/data", params={"window": window}).json()
        assert d["totals"]["sessions"] == 9, window
        assert d["totals"]["expected"] == pytest.approx(1.0)
        assert d["totals"]["observed"] == 3
        assert d["channels"]["utm_medium"] == [  # the largest by sessions first
            {
                "value": "cpc",
                "sessions": 5,
                "mean_probability": pytest.approx(0.1),
                "expected": pytest.approx(0.5),
                "observed": 2,
                "observed_to_expected": pytest.approx(4.0),
            },
            {
                "value": "organic",
                "sessions": 4,
                "mean_probability": pytest.approx(0.125),
                "expected": pytest.approx(0.5),
                "observed": 1,
                "observed_to_expected": pytest.approx(2.0),
            },
        ]
        assert [r["value"] for r in d["channels"]["utm_source"]] == ["google"]
        assert d["now"]["active_sessions"] == 5
        assert d["now"]["event_time_ms"] == NOW  # the latest partition's

    now = d["now"]
    at = now["minutes"].index(minute * 60_000)  # this minute, or the one before by now
    assert (now["events_per_minute"][at], now["scores_per_minute"][at]) == (15, 5)
    assert sum(now["events_per_minute"]) == 15 and sum(now["scores_per_minute"]) == 5
    chart = {c["start_ms"]: c for c in d["chart"]}
    assert chart[DAY * DAY_MS]["sessions"] == 8
    assert chart[DAY * DAY_MS]["expected"] == pytest.approx(1.0)
    assert chart[DAY * DAY_MS]["observed"] == 3
    assert chart[(DAY - 1) * DAY_MS]["sessions"] == 4
    assert chart[(DAY - 1) * DAY_MS]["expected"] == pytest.approx(0.1)
    assert sum(c["sessions"] for c in d["chart"]) == 12


def test_hot_lists_merge_across_partitions_by_probability(client, fake_redis) -> None:
    layout = fake_redis.record_layout(2)
    fake_redis.zsets[f"{layout.dash(0)}:hot"] = {b"a": 0.9, b"c": 0.3}
    fake_redis.zsets[f"{layout.dash(1)}:hot"] = {b"b": 0.5, b"d": 0.7}
    for p, sid, city in ((0, "a", "Kazan"), (0, "c", "Omsk"), (1, "b", "Perm"), (1, "d", "Tver")):
        channel = ("cpc", "src", sid, "desktop", city)
        _session(fake_redis, layout, p, sid, row=row(channel=channel, start_ms=NOW + p))
    d = client.get("/dashboard/data").json()
    assert [(h["session_id"], h["probability"]) for h in d["hot"]] == [
        ("a", 0.9),
        ("d", 0.7),
        ("b", 0.5),
        ("c", 0.3),
    ]
    # Each from its own partition's session hash.
    assert [(h["utm_campaign"], h["geo_city"], h["started_ms"]) for h in d["hot"]] == [
        ("a", "Kazan", NOW),
        ("d", "Tver", NOW + 1),
        ("b", "Perm", NOW + 1),
        ("c", "Omsk", NOW),
    ]
    top = client.get("/dashboard/data", params={"hot": 3}).json()["hot"]
    assert [h["session_id"] for h in top] == ["a", "d", "b"]


def test_a_hot_session_whose_hash_expired_is_left_out(client, fake_redis) -> None:
    layout = fake_redis.record_layout(2)
    fake_redis.zsets[f"{layout.dash(0)}:hot"] = {b"gone": 0.9, b"here": 0.2}
    _session(fake_redis, layout, 0, "here")
    d = client.get("/dashboard/data").json()
    assert [h["session_id"] for h in d["hot"]] == ["here"]


def test_without_a_recorded_layout_the_dashboard_is_empty(client, fake_redis) -> None:
    layout = _fill(fake_redis)
    del fake_redis.hashes[keys.layout_key()]
    d = client.get("/dashboard/data", params={"window": "all"}).json()
    assert d["hot"] == [] and d["totals"]["sessions"] == 0
    assert all(rows == [] for rows in d["channels"].values())
    assert d["now"]["active_sessions"] == 0 and d["now"]["event_time_ms"] is None
    assert all(c["sessions"] == 0 for c in d["chart"])
    assert not any(c[1].startswith(layout.base(0)) for c in fake_redis.calls)


def test_the_dashboard_reads_under_the_configured_prefix(model_path, fake_redis) -> None:
    _fill(fake_redis)  # another deployment's, under the default prefix
    layout = fake_redis.record_layout(3, prefix="acme")
    fake_redis.hashes[f"{layout.dash(2)}:meta"] = {b"now_ms": str(NOW).encode(), b"active": b"4"}
    status = {"lag": 1, "model_version": "v9", "partitions": [0, 1, 2], "at_ms": 1e16}
    fake_redis.hashes[workers_key("acme")] = {b"host:2": orjson.dumps(status)}
    app = create_app(
        ApiSettings(model_path=model_path, redis_key_prefix="acme", api_insecure_demo=True),
        redis=fake_redis,
    )
    with TestClient(app) as c:
        d = c.get("/dashboard/data").json()
    assert d["now"]["active_sessions"] == 4 and d["hot"] == []
    assert d["now"]["model_versions"] == ["v9"] and d["now"]["consumer_lag"] == 1


def test_an_unknown_window_is_a_422_naming_it(client) -> None:
    r = client.get("/dashboard/data", params={"window": "week"})
    assert r.status_code == 422
    assert "window" in r.text


def test_the_stream_sends_server_sent_events(client, fake_redis) -> None:
    _fill(fake_redis)
    r = client.get("/dashboard/stream", params={"window": "all", "updates": 2, "every": 0.5})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert len(events) == 2
    assert all(e.startswith("data: ") for e in events)
    assert orjson.loads(events[0][len("data: ") :])["hot"][0]["session_id"] == "s1"


def test_the_stream_says_when_redis_is_away_and_goes_on(client, fake_redis, caplog) -> None:
    _fill(fake_redis)
    fake_redis.down = True
    with caplog.at_level(logging.WARNING, logger="api.dashboard"):
        r = client.get("/dashboard/stream", params={"updates": 2, "every": 0.5})
    assert r.status_code == 200
    events = [e for e in r.text.split("\n\n") if e]
    assert len(events) == 2 and all(e.startswith("event: problem\ndata: ") for e in events)
    # Redis's own words go to the log (once for the outage), not to the page.
    assert "Connection refused" not in r.text
    assert orjson.loads(events[0].split("data: ", 1)[1])["error"].startswith("data unavailable")
    assert caplog.text.count("Connection refused") == 1
