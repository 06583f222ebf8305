"""The operator's calibration commands on the real stack: a record on the topic reaches
the worker's next scores and the API's copy in Redis; a rollback takes it back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from artifact import load_model
from bench.procs import redis_client
from contracts import keys, topics
from stream.calibration_ops import run_calibration
from stream.calibration_topic import publish
from stream.recalibration import make_record
from stream.replay import build_events, send_events
from stream.settings import StreamSettings
from stream.tail import read_topic
from training.generate import generate

pytestmark = pytest.mark.integration


def _starts(settings: StreamSettings, events: list, until: int) -> dict[str, dict]:
    asyncio.run(send_events(settings, events, progress=False))
    scores = asyncio.run(
        read_topic(
            settings.kafka_bootstrap,
            topics.topic_name(topics.SCORES, settings.topic_prefix),
            until=until,
            timeout_s=120,
            counts=lambda e: e.get("trigger") == "session_start",
        )
    )
    return {e["session_id"]: e for e in scores if e["trigger"] == "session_start"}


def _mirrored(settings: StreamSettings, version: str, calibration_id: str) -> bool:
    r = redis_client(settings)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        raw = r.hget(keys.calibrations_key(settings.redis_key_prefix), version)
        if raw and orjson.loads(raw)["calibration_id"] == calibration_id:
            return True
        time.sleep(0.5)
    return False


def test_a_published_calibration_and_its_rollback_reach_the_next_scores(
    worker, stream_settings: StreamSettings, model_path: Path, tmp_path: Path
) -> None:
    generate(tmp_path / "data", 300, seed=41, progress=False)
    rows = [(t, k, v) for t, k, v in build_events(tmp_path / "data") if t == topics.SESSIONS]
    first, second, third = rows[:100], rows[100:200], rows[200:]
    version = load_model(model_path).version
    settings = stream_settings

    before = _starts(settings, first, 100)
    assert {e["calibration_id"] for e in before.values()} == {"offline"}

    # What the quality process publishes when outcomes call for a lower level.
    asyncio.run(publish(settings, [make_record(version, 1, -0.3, "active", "estimate")]))
    assert _mirrored(settings, version, f"{version}#1")  # the worker read it
    moved = {s: e for s, e in _starts(settings, second, 200).items() if s not in before}
    assert {e["calibration_id"] for e in moved.values()} == {f"{version}#1"}
    assert {e["calibration_shift"] for e in moved.values()} == {-0.3}

    out = run_calibration(settings, "rollback", version, "offline")
    assert f"{version}#2" in out and "paused" in out
    assert _mirrored(settings, version, f"{version}#2")
    done = set(before) | set(moved)
    back = {s: e for s, e in _starts(settings, third, 300).items() if s not in done}
    assert {e["calibration_id"] for e in back.values()} == {f"{version}#2"}
    assert {e["calibration_shift"] for e in back.values()} == {0.0}
    model = load_model(model_path)
    for sid, e in list(back.items())[:20]:
        row = orjson.loads(next(v for _, _, v in third if orjson.loads(v)["session_id"] == sid))
        assert e["probability"] == pytest.approx(float(model.score_rows([row])[0]), abs=1e-6)
    shown = run_calibration(settings, "show", None, None)
    assert f"{version}#1: shift -0.3000" in shown and f"in use: {version}#2" in shown
