"""`python -m stream dead-letters` against the real broker and a real worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from helpers import read_all, read_scores

from bench.procs import ROOT, settings_env
from contracts import topics
from stream.admin import ensure_topics
from stream.processor import Record, dead_letter
from stream.replay import build_events, send_events
from stream.settings import StreamSettings
from training.generate import generate

pytestmark = pytest.mark.integration


def _cli(settings: StreamSettings, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "stream", "dead-letters", *args],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


async def _publish_letters(settings: StreamSettings, letters: list[bytes]) -> None:
    await ensure_topics(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        name = topics.topic_name(topics.DEAD_LETTERS, settings.topic_prefix)
        for letter in letters:
            await producer.send_and_wait(name, letter)
    finally:
        await producer.stop()


def test_dead_letters_go_back_to_their_source_after_a_fix(
    worker, stream_settings: StreamSettings, tmp_path: Path
) -> None:
    generate(tmp_path / "data", 60, seed=17, progress=False)
    sessions = [e for e in build_events(tmp_path / "data") if e[0] == topics.SESSIONS][:40]
    prefix = stream_settings.topic_prefix
    # Valid rows that an earlier, broken release sent aside at the scoring stage.
    letters = [
        dead_letter(
            Record(
                value=value,
                topic=topics.topic_name(topics.SESSIONS, prefix),
                partition=0,
                offset=k,
                key=key,
            ),
            "score",
            "ValueError: a bug since fixed",
        )
        for k, (_, key, value) in enumerate(sessions)
    ]
    asyncio.run(_publish_letters(stream_settings, letters))
    # And rows that are bad for good: the running worker dead-letters them at parse.
    junk = [(topics.SESSIONS, b"j1", b"{not json"), (topics.HITS, b"j2", b"[]")]
    asyncio.run(send_events(stream_settings, junk, progress=False))
    deadline_letters = len(letters) + len(junk)
    stored = []
    for _ in range(20):
        stored = read_all(stream_settings, topics.DEAD_LETTERS, idle_s=2)
        if len(stored) >= deadline_letters:
            break
    assert len(stored) == deadline_letters

    listed = _cli(stream_settings, "list")
    assert f"{deadline_letters} dead letters read, {deadline_letters} matched" in listed
    assert "stage parse: 2" in listed and f"stage score: {len(letters)}" in listed

    dry = _cli(stream_settings, "replay", "--stage", "score", "--dry-run")
    assert "dry run: nothing sent" in dry

    out = _cli(stream_settings, "replay", "--stage", "score")
    assert f"{len(letters)} sent back to their source topics" in out
    scores = read_scores(stream_settings, len(letters))
    scored = {e["session_id"] for e in scores if e["trigger"] == "session_start"}
    assert scored == {orjson.loads(v)["session_id"] for _, _, v in sessions}

    # The position is committed: a second run finds nothing new to send.
    again = _cli(stream_settings, "replay", "--stage", "score")
    assert "0 dead letters read" in again and "0 sent back" in again
