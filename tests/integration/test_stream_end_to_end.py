"""The whole path on the real Kafka broker and Redis: replay → worker → scores → API."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from bench.procs import redis_client
from contracts import keys, topics
from contracts.history import latest_from_hash
from stream.replay import build_events, send_events
from stream.settings import StreamSettings
from stream.tail import is_event_score, read_topic
from training.generate import generate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def replay_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("replay")
    generate(out, 300, seed=11, progress=False)
    return out


def test_replayed_sessions_are_scored_end_to_end(
    worker, stream_settings: StreamSettings, replay_data: Path, model_path: Path
) -> None:
    events = build_events(replay_data)
    sessions = [orjson.loads(v) for t, _, v in events if t == topics.SESSIONS]
    session_ids = {s["session_id"] for s in sessions}
    hits_by_session: dict[str, set[int]] = defaultdict(set)
    for t, _, v in events:
        if t == topics.HITS:
            h = orjson.loads(v)
            if h["session_id"] in session_ids:
                hits_by_session[h["session_id"]].add(h["hit_number"])
    # One hit goes out before its session starts: it must wait for the row, not vanish.
    early = next(
        i
        for i, (t, _, v) in enumerate(events)
        if t == topics.HITS and orjson.loads(v)["session_id"] in session_ids
    )
    events.insert(0, events.pop(early))
    # Bad events mixed in: the worker must route them aside and keep going.
    events.insert(5, (topics.SESSIONS, b"junk", b"{not json"))
    events.insert(9, (topics.HITS, b"junk", orjson.dumps({"session_id": "x"})))
    asyncio.run(send_events(stream_settings, events, progress=False))

    expected = len(session_ids) + sum(len(v) for v in hits_by_session.values())
    prefix = stream_settings.topic_prefix
    scores = asyncio.run(
        read_topic(
            stream_settings.kafka_bootstrap,
            topics.topic_name(topics.SCORES, prefix),
            until=expected,
            timeout_s=120,
            counts=is_event_score,
        )
    )
    by_session: dict[str, list[dict]] = defaultdict(list)
    for e in scores:  # closing scores too: a session may close while the test reads
        by_session[e["session_id"]].append(e)
    scores = [e for e in scores if is_event_score(e)]

    # Every session got a session-start score, every hit of a known session a hit score.
    starts = {e["session_id"] for e in scores if e["trigger"] == "session_start"}
    assert starts == session_ids
    for sid, numbers in hits_by_session.items():
        got = {e["hit_number"] for e in by_session[sid] if e["trigger"] == "hit"}
        assert got == numbers, sid
    assert all(0 < e["probability"] < 1 for e in scores)
    assert len({e["score_id"] for e in scores}) == expected

    # The latest score in Redis is the last one published for the session (read after
    # the scores: a closing score may have come since).
    r = redis_client(stream_settings)

    layout = keys.Layout(stream_settings.redis_key_prefix, stream_settings.topic_partitions)

    def r_latest(sid: str) -> dict:
        key = layout.session(layout.partition_of(sid), sid)
        name = r.hget(key, keys.LATEST_FIELD)  # the latest score's history field
        entry, row = r.hmget(key, [name, keys.ROW_FIELD])
        return orjson.loads(latest_from_hash(sid, name, entry, row) or b"")

    for sid, published in by_session.items():
        stored = r_latest(sid)
        assert stored == published[-1] or stored["trigger"] == "session_end"

    # The API returns it.
    api = create_app(
        ApiSettings(
            redis_url=stream_settings.redis_url,
            model_path=model_path,
            redis_key_prefix=stream_settings.redis_key_prefix,
            api_insecure_demo=True,  # in-process, no keys: the answers are what is tested
        )
    )
    with TestClient(api) as client:
        sid = next(iter(hits_by_session))
        body = client.get(f"/sessions/{sid}/score").json()
        assert body["score_id"] == r_latest(sid)["score_id"]
        assert body["trigger"] in ("hit", "session_end")
        assert client.get("/sessions/unknown-session/score").status_code == 404

    # The bad events are dead letters with their reason; the worker is still running.
    dead = asyncio.run(
        read_topic(
            stream_settings.kafka_bootstrap,
            topics.topic_name(topics.DEAD_LETTERS, prefix),
            until=2,
            timeout_s=30,
            identity=lambda e: (e["source_topic"], e["offset"]),
        )
    )
    reasons = sorted(d["error"] for d in dead)
    assert any("not JSON" in x for x in reasons)
    assert any("hit_number is missing" in x for x in reasons)
    assert {d["original_text"] for d in dead} >= {"{not json"}
    assert worker.alive()
