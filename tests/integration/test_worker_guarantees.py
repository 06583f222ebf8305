"""The worker's guarantees on the real Kafka broker and Redis, one test each."""

from __future__ import annotations

import asyncio
import base64
import random
import shutil
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from helpers import (
    Truth,
    check_exactly_once,
    kill_9_while_sending,
    read_all,
    read_scores,
    topic_size,
)

from artifact import load_model, read_card, save_model
from bench.procs import WorkerProcess, free_port, metrics, total
from contracts import topics
from features.target import TARGET_ACTIONS
from stream.replay import send_events
from stream.settings import StreamSettings
from stream.tail import read_topic
from training.generate import generate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Truth:
    out = tmp_path_factory.mktemp("guarantees")
    generate(out, 400, seed=31, progress=False)
    return Truth(out)


def test_kill_9_at_random_moments_loses_nothing_and_counts_nothing_twice(
    stream_settings: StreamSettings, truth: Truth, tmp_path: Path
) -> None:
    settings = stream_settings.model_copy(update={"batch_max": 40})
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    worker.wait_ready()
    try:
        kills = kill_9_while_sending(worker, settings, truth.events, seed=5)
        scores = read_scores(settings, truth.expected_scores, timeout_s=240)
    finally:
        worker.stop()
    assert kills >= 3
    check_exactly_once(truth, settings, scores)


def test_duplicates_and_reordered_hits_change_nothing(
    worker, stream_settings: StreamSettings, truth: Truth
) -> None:
    rng = random.Random(9)
    sessions = [e for e in truth.events if e[0] == topics.SESSIONS]
    hits = [e for e in truth.events if e[0] == topics.HITS]
    rng.shuffle(hits)  # out of hit_number order within sessions
    dupes = rng.sample(hits, 150) + rng.sample(sessions, 40)
    # A few hits even before their session, consumed before it is sent (a fetch that
    # holds both takes its sessions first); everything else after it.
    early = hits[:25]
    events = early + sessions + hits[25:] + dupes
    asyncio.run(send_events(stream_settings, early, progress=False))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if total(metrics(stream_settings.metrics_port), "scorer_worker_events_in_total") >= 25:
            break
        time.sleep(0.2)
    asyncio.run(send_events(stream_settings, events[len(early) :], progress=False))
    scores = read_scores(stream_settings, truth.expected_scores)
    check_exactly_once(truth, stream_settings, scores)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = metrics(stream_settings.metrics_port)
        if total(m, "scorer_worker_duplicates_total") >= 190:
            break
        time.sleep(0.5)
    assert total(m, "scorer_worker_duplicates_total") >= 190
    assert m["scorer_worker_out_of_order_hits_total{}"] > 0
    assert m["scorer_worker_parked_hits_total{}"] > 0
    assert total(m, "scorer_worker_events_in_total") >= len(events)
    # Parked hits are applied where they were parked, never sent round the topic again.
    assert topic_size(stream_settings, topics.HITS) == sum(e[0] == topics.HITS for e in events)


def test_idle_sessions_close_with_a_final_score_and_an_outcome(
    stream_settings: StreamSettings, truth: Truth, tmp_path: Path
) -> None:
    settings = stream_settings.model_copy(update={"session_gap_s": 2.0, "close_check_s": 0.5})
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    try:
        worker.wait_ready()
        asyncio.run(send_events(settings, truth.events, progress=False))
        read_scores(settings, truth.expected_scores)  # every event has been processed
        # No further events: the wall clock moves the partitions' event time on.
        deadline = time.monotonic() + 90
        outcomes: list[dict] = []
        while time.monotonic() < deadline:
            outcomes = read_all(settings, topics.OUTCOMES, idle_s=2)
            if {o["session_id"] for o in outcomes} >= set(truth.sessions):
                break
        scores = read_all(settings, topics.SCORES, idle_s=2)
        m = metrics(settings.metrics_port)
    finally:
        worker.stop()
    # A conversion that arrives after an inactivity close supersedes the close's outcome.
    by_session: dict[str, dict] = {}
    for o in outcomes:
        if by_session.get(o["session_id"], {}).get("outcome") != "converted":
            by_session[o["session_id"]] = o
    assert set(by_session) == set(truth.sessions)
    ends = {e["session_id"] for e in scores if e["trigger"] == "session_end"}
    assert ends == set(truth.sessions)
    for sid, outcome in by_session.items():
        expected = "converted" if truth.converted(sid) else "not_converted"
        assert outcome["outcome"] == expected, sid
        assert outcome["last_score"] is not None
        assert outcome["last_score"]["session_id"] == sid
        if expected == "converted":
            first = min(
                h["hit_number"] for h in truth.hits[sid] if h["event_action"] in TARGET_ACTIONS
            )
            assert outcome["hit_number"] >= first
    converted = sum(truth.converted(sid) for sid in truth.sessions)
    assert len(truth.sessions) <= len({o["outcome_id"] for o in outcomes})
    assert len({o["outcome_id"] for o in outcomes}) <= len(truth.sessions) + converted
    assert m["scorer_worker_sessions_closed_total{}"] == len(truth.sessions)


def test_a_new_artifact_is_swapped_in_without_a_restart(
    stream_settings: StreamSettings, truth: Truth, tmp_path: Path, model_path: Path
) -> None:
    deployed = tmp_path / "models"
    deployed.mkdir()
    for name in ("Pickled_model.pkl", "model_card.json"):
        shutil.copy(model_path.with_name(name), deployed / name)
    settings = stream_settings.model_copy(
        update={"model_path": deployed / "Pickled_model.pkl", "model_reload_s": 0.5}
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    worker.start()
    sessions = [e for e in truth.events if e[0] == topics.SESSIONS]
    first, second = sessions[:100], sessions[100:200]
    try:
        worker.wait_ready()
        old = load_model(deployed / "Pickled_model.pkl").version
        asyncio.run(send_events(settings, first, progress=False))
        read_scores(settings, len(first))
        model = load_model(deployed / "Pickled_model.pkl")
        model.version = "hot-reloaded"
        card = {k: v for k, v in read_card(deployed / "Pickled_model.pkl").items()}
        card.pop("artifact_sha256")
        save_model(model, deployed, card)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if 'version="hot-reloaded"' in _raw_metrics(settings.metrics_port):
                break
            time.sleep(0.3)
        asyncio.run(send_events(settings, second, progress=False))
        scores = read_scores(settings, len(first) + len(second))
        assert worker.alive()
    finally:
        worker.stop()
    # Session-start scores: the first sessions may also be closed later, by the new model.
    version = {
        e["session_id"]: e["model_version"] for e in scores if e["trigger"] == "session_start"
    }
    assert {version[orjson.loads(v)["session_id"]] for _, _, v in first} == {old}
    assert {version[orjson.loads(v)["session_id"]] for _, _, v in second} == {"hot-reloaded"}


def _raw_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_malformed_events_all_become_dead_letters_and_valid_ones_are_scored(
    worker, stream_settings: StreamSettings, truth: Truth
) -> None:
    valid = truth.events
    session_row = orjson.loads(next(v for t, _, v in valid if t == topics.SESSIONS))
    bad = [
        (topics.SESSIONS, b"k1", b"{not json"),
        (topics.SESSIONS, b"k2", b"[1, 2, 3]"),
        (topics.SESSIONS, b"k3", b""),
        (
            topics.SESSIONS,
            b"k4",
            orjson.dumps({**session_row, "session_id": "x1", "visit_number": "many"}),
        ),
        (
            topics.SESSIONS,
            b"k5",
            orjson.dumps({**session_row, "session_id": "x2", "visit_date": "24.11.2021"}),
        ),
        (
            topics.SESSIONS,
            b"k6",
            orjson.dumps({**session_row, "session_id": "x3", "utm_medium": 5}),
        ),
        (topics.HITS, b"k7", orjson.dumps({"session_id": "x4"})),
        (
            topics.HITS,
            b"k8",
            orjson.dumps({"session_id": "x5", "hit_number": 1, "hit_time": "soon"}),
        ),
        (topics.HITS, b"k9", orjson.dumps({"hit_number": 3})),
        (topics.HITS, b"k10", b"\xff\xfe"),
    ]
    events = list(valid)
    rng = random.Random(2)
    for e in bad:
        events.insert(rng.randrange(len(events)), e)
    asyncio.run(send_events(stream_settings, events, progress=False))
    scores = read_scores(stream_settings, truth.expected_scores)
    check_exactly_once(truth, stream_settings, scores)
    dead = asyncio.run(
        read_topic(
            stream_settings.kafka_bootstrap,
            topics.topic_name(topics.DEAD_LETTERS, stream_settings.topic_prefix),
            until=len(bad),
            timeout_s=60,
            identity=lambda e: (e["source_topic"], e["partition"], e["offset"]),
        )
    )
    assert len({(d["source_topic"], d["partition"], d["offset"]) for d in dead}) == len(bad)
    assert {d["original_base64"] for d in dead} >= {base64.b64encode(v).decode() for _, _, v in bad}
    assert all(d["stage"] == "parse" and d["error"] for d in dead)
    m = metrics(stream_settings.metrics_port)
    assert m["scorer_worker_dead_letters_total{stage=parse}"] == len(bad)
    assert worker.alive()


def test_redis_down_means_retries_then_exit_and_no_event_is_lost(
    stream_settings: StreamSettings, truth: Truth, tmp_path: Path
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    broken = stream_settings.model_copy(update={"redis_url": dead_redis, "redis_retries": 3})
    worker = WorkerProcess(broken, tmp_path / "broken.log")
    worker.start()
    sessions = [e for e in truth.events if e[0] == topics.SESSIONS][:30]
    try:
        worker.wait_ready()
        asyncio.run(send_events(broken, sessions, progress=False))
        assert worker.proc is not None
        code = worker.proc.wait(timeout=60)
    finally:
        worker.stop()
    assert code == 70
    assert "redis" in (tmp_path / "broken.log").read_text().lower()
    # The same consumer group with Redis back: the unacked events are scored.
    healthy = WorkerProcess(stream_settings, tmp_path / "healthy.log")
    healthy.start()
    try:
        healthy.wait_ready()
        scores = read_scores(stream_settings, len(sessions), timeout_s=120)
    finally:
        healthy.stop()
    assert {e["session_id"] for e in scores} >= {
        orjson.loads(v)["session_id"] for _, _, v in sessions
    }
