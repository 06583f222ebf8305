"""The dashboard's routes: the page, its JSON, its event stream, and the API key."""

import orjson
import pytest

from contracts import keys
from contracts.dashboard import dash_prefix, workers_key
from contracts.history import history_entry

P = dash_prefix("scorer")
NOW = 1_640_000_000_000.0


def _fill(fake_redis) -> None:
    """What the worker's Lua would have left: one hour bucket, a hot session, a worker."""
    fake_redis.hashes[f"{P}:meta"] = {b"now_ms": str(NOW).encode(), b"active": b"2"}
    fake_redis.hashes[f"{P}:all"] = {
        b"n": b"2",
        b"p": b"0.3",
        b"c": b"1",
        b"n|utm_medium|cpc": b"2",
        b"p|utm_medium|cpc": b"0.3",
        b"c|utm_medium|cpc": b"1",
    }
    fake_redis.zsets[f"{P}:hot"] = {b"s1": 0.4}
    fake_redis.hashes["scorer:{s1}:dash"] = {
        b"m": b"cpc",
        b"s": b"src",
        b"c": b"(none)",
        b"dev": b"mobile",
        b"city": b"Moscow",
        b"hits": b"3",
        b"ms": str(NOW).encode(),
    }
    # Its trajectory comes from its score history, in session order (hit 10 after hit 2;
    # an entry kept as JSON counts too).
    fake_redis.hashes[keys.score_history_key("s1")] = {
        b"hit:10": history_entry(0.4, "v1", None, 0),
        b"session_start:": history_entry(0.1, "v1", True, 0),
        b"hit:2": b'{"probability":0.2,"trigger":"hit"}',
    }
    status = {"lag": 7, "model_version": "v1", "partitions": [0], "at_ms": 1e16}
    fake_redis.hashes[workers_key("scorer")] = {b"host:1": orjson.dumps(status)}


def test_the_page_is_served_and_reads_its_stream(client) -> None:
    r = client.get("/dashboard")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "EventSource" in r.text and "dashboard/stream" in r.text


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
    assert d["hot"][0]["session_id"] == "s1"
    assert d["hot"][0]["trajectory"] == [0.1, 0.2, 0.4]
    assert d["hot"][0]["hits"] == 3
    assert d["now"]["active_sessions"] == 2
    assert d["now"]["consumer_lag"] == 7
    assert d["now"]["model_versions"] == ["v1"]


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


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/data", "/dashboard/stream"])
def test_the_key_protects_page_and_data(keyed_client, fake_redis, path) -> None:
    _fill(fake_redis)
    assert keyed_client.get(path).status_code == 401
    assert keyed_client.get(path, params={"key": "wrong", "updates": 1}).status_code == 401
    ok = keyed_client.get(path, params={"key": "s3cret", "updates": 1})
    assert ok.status_code == 200
    assert "s1" in ok.text or path == "/dashboard"
    by_header = keyed_client.get(path, params={"updates": 1}, headers={"X-API-Key": "s3cret"})
    assert by_header.status_code == 200
