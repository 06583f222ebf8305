"""Two worker processes in one consumer group share the partitions."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from helpers import Truth, read_scores, stored_state

from bench.procs import WorkerProcess, free_port, metrics, redis_client, total
from contracts import keys
from stream.replay import send_events
from stream.settings import StreamSettings
from training.generate import generate

pytestmark = pytest.mark.integration


def _events_in(port: int) -> float:
    try:
        return total(metrics(port), "scorer_worker_events_in_total")
    except OSError:
        return 0.0


def test_a_second_worker_joins_and_the_first_leaves_mid_stream(
    stream_settings: StreamSettings, tmp_path: Path
) -> None:
    generate(tmp_path / "data", 1200, seed=41, progress=False)
    truth = Truth(tmp_path / "data")
    first = WorkerProcess(stream_settings, tmp_path / "first.log")
    second_settings = stream_settings.model_copy(update={"metrics_port": free_port()})
    second = WorkerProcess(second_settings, tmp_path / "second.log")
    first.start()
    first.wait_ready()
    sender = threading.Thread(
        target=lambda: asyncio.run(
            send_events(stream_settings, truth.events, rate=700, progress=False)
        )
    )
    sender.start()
    try:
        time.sleep(2)
        second.start()
        second.wait_ready()
        # Both consume once the group has rebalanced.
        deadline = time.monotonic() + 60
        before = _events_in(second_settings.metrics_port)
        while time.monotonic() < deadline and _events_in(second_settings.metrics_port) <= before:
            time.sleep(0.5)
        first_count = _events_in(stream_settings.metrics_port)
        second_count = _events_in(second_settings.metrics_port)
        assert first_count > 0 and second_count > 0, (first_count, second_count)
        assert sender.is_alive(), "the replay should still be running when the first leaves"
        first.stop()  # leaves the group mid-stream
        sender.join()
        scores = read_scores(stream_settings, truth.expected_scores, timeout_s=240)
        assert second.alive()
    finally:
        sender.join()
        first.stop()
        second.stop()
    got = {(e["session_id"], e["trigger"], e["hit_number"]) for e in scores}
    for sid, hits in truth.hits.items():
        assert (sid, "session_start", None) in got
        assert {(sid, "hit", h["hit_number"]) for h in hits} <= got
    r = redis_client(stream_settings)
    layout = keys.Layout(stream_settings.redis_key_prefix, stream_settings.topic_partitions)
    for sid in truth.sessions:
        _, applied = stored_state(r, sid, layout)
        assert applied == {h["hit_number"] for h in truth.hits[sid]}, sid
