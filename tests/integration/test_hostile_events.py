"""Hostile events mixed into a paced replay, on the real Kafka broker and Redis.

The website's events are public input. Each hostile event must become a dead letter
that names its reason and fits its topic; the worker must never exit; every other
event must be scored exactly as without them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import orjson
import pytest
from helpers import Truth, check_exactly_once, read_scores

from bench.procs import WorkerProcess, metrics, total
from contracts import limits, topics
from stream.replay import send_events
from stream.settings import StreamSettings
from stream.tail import read_topic
from training.generate import generate

pytestmark = pytest.mark.integration

KAFKA_MESSAGE_MAX = 1024 * 1024  # the broker's default max.message.bytes


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Truth:
    out = tmp_path_factory.mktemp("hostile")
    generate(out, 300, seed=41, progress=False)
    return Truth(out)


def _hostile(truth: Truth) -> list[tuple[str, bytes, bytes, str, str]]:
    """Hostile events: (topic, key, value, expected stage, expected kind)."""
    row = next(orjson.loads(v) for t, _, v in truth.events if t == topics.SESSIONS)
    hit = next(orjson.loads(v) for t, _, v in truth.events if t == topics.HITS)
    big_number = str(2**64 + 5).encode()

    def session(sid: str, **change: object) -> bytes:
        return orjson.dumps({**row, "session_id": sid, **change})

    def a_hit(sid: str, **change: object) -> bytes:
        return orjson.dumps({**hit, "session_id": sid, **change})

    out = [
        # The three that crash-looped the worker before.
        (
            topics.HITS,
            b"h1",
            a_hit("h1", hit_number=7).replace(b'"hit_number":7', b'"hit_number":' + big_number),
            "parse",
            "out_of_bounds",
        ),
        (topics.HITS, b"h2", a_hit("h2", hit_time=1e15), "parse", "out_of_bounds"),
        (
            topics.HITS,
            b"h3",
            a_hit("h3", hit_page_path="p" * 300_000),
            "parse",
            "too_large",
        ),
        (topics.HITS, b"h4", a_hit("h4", hit_time=-1.0), "parse", "out_of_bounds"),
        (topics.HITS, b"h5", a_hit("h5", event_label="l" * 5000), "parse", "too_long"),
        (topics.HITS, b"h6", a_hit("bad}{id"), "parse", "bad_id"),
        (
            topics.SESSIONS,
            b"s1",
            session("s1", visit_date="9999-12-31"),
            "parse",
            "out_of_bounds",
        ),
        (topics.SESSIONS, b"s2", session("s2", visit_date="2126-06-01"), "parse", "out_of_bounds"),
        (
            topics.SESSIONS,
            b"s3",
            session("s3", visit_number=7).replace(
                b'"visit_number":7', b'"visit_number":' + big_number
            ),
            "parse",
            "out_of_bounds",
        ),
        (topics.SESSIONS, b"s4", session("9" * 500), "parse", "bad_id"),
        (topics.SESSIONS, b"s5", session("s5", client_id="c c"), "parse", "bad_id"),
        (topics.SESSIONS, b"s6", session("s6", utm_source="u" * 250), "parse", "too_long"),
        (topics.SESSIONS, b"s7", session("s7", geo_city={"a": 1}), "parse", "wrong_type"),
        (topics.SESSIONS, b"s8", session("s8", visit_time="1" * 300_000), "parse", "too_large"),
    ]
    # A session whose row never comes: its waiting hits are bounded.
    flood = [
        (topics.HITS, b"flood", a_hit("flood", hit_number=n), "", "")
        for n in range(1, limits.PARKED_HITS_MAX + 3)
    ]
    return out + flood


def test_hostile_events_are_dead_letters_and_the_worker_scores_everything_else(
    stream_settings: StreamSettings, truth: Truth, tmp_path: Path
) -> None:
    hostile = _hostile(truth)
    events = list(truth.events)
    rng = random.Random(11)
    for t, k, v, _, _ in hostile:
        events.insert(rng.randrange(len(events)), (t, k, v))
    worker = WorkerProcess(stream_settings, tmp_path / "worker.log")
    worker.start()
    try:
        worker.wait_ready()
        assert worker.proc is not None
        pid = worker.proc.pid
        asyncio.run(send_events(stream_settings, events, rate=700, progress=False))
        scores = read_scores(stream_settings, truth.expected_scores, timeout_s=240)
        refused = [h for h in hostile if h[3]]
        # The flood's hits beyond the bound are refused too (which ones depends on order).
        n_letters = len(refused) + 2
        letters = asyncio.run(
            read_topic(
                stream_settings.kafka_bootstrap,
                topics.topic_name(topics.DEAD_LETTERS, stream_settings.topic_prefix),
                until=n_letters,
                timeout_s=120,
                identity=lambda e: (e["source_topic"], e["partition"], e["offset"]),
            )
        )
        m = metrics(stream_settings.metrics_port)
        assert worker.alive() and worker.proc.pid == pid, "the worker exited"
    finally:
        worker.stop()
    check_exactly_once(truth, stream_settings, scores)

    by_sha = {d["original_sha256"]: d for d in letters}
    for topic, _, value, stage, kind in refused:
        letter = by_sha.get(hashlib.sha256(value).hexdigest())
        assert letter is not None, (topic, value[:80])
        assert (letter["stage"], letter["kind"]) == (stage, kind), letter["error"]
        assert letter["source_topic"].endswith(topic)
        assert letter["original_bytes"] == len(value)
        assert letter["original_truncated"] == (len(value) > limits.DEAD_LETTER_ORIGINAL_MAX_BYTES)
        assert len(letter["error"]) <= limits.ERROR_MAX_CHARS
    flood = [d for d in letters if d["key"] == "flood"]
    assert [(d["stage"], d["kind"]) for d in flood] == [("park", "parked_full")] * 2
    for d in letters:
        assert len(orjson.dumps(d)) < KAFKA_MESSAGE_MAX // 4
    assert len(letters) == n_letters
    assert total(m, "scorer_worker_refused_total") == n_letters
    assert m["scorer_worker_refused_total{kind=parked_full,stage=park}"] == 2
    assert total(m, "scorer_worker_exits_total") == 0
