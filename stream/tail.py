"""Reading a topic back: print a sample and wait until the expected events arrived."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pandas as pd
from aiokafka import AIOKafkaConsumer

from contracts import topics
from stream.settings import StreamSettings


def expected_scores(data: Path) -> int:
    """Count the scores a data set should produce: one per session and per known hit."""
    sessions = pd.read_csv(data / "ga_sessions.csv", usecols=["session_id"], dtype=str)
    hits = pd.read_csv(data / "ga_hits.csv", usecols=["session_id", "hit_number"], dtype=str)
    known = hits[hits["session_id"].isin(set(sessions["session_id"]))]
    return sessions["session_id"].nunique() + len(known.drop_duplicates())


def _score_id(event: dict) -> object:
    return event.get("score_id")


def is_event_score(event: dict) -> bool:
    """Tell a score of an event (session start or hit) from a session's closing score."""
    return event.get("trigger") in ("session_start", "hit")


async def read_topic(
    bootstrap: str,
    name: str,
    *,
    until: int | None,
    timeout_s: float,
    idle_s: float = 5.0,
    identity: Callable[[dict], object] = _score_id,
    counts: Callable[[dict], bool] | None = None,
) -> list[dict]:
    """Read a topic from its start until `until` distinct events arrived, or a timeout.

    Events are told apart by ``identity`` (the score id by default) and only those for
    which ``counts`` is true count towards ``until``; without ``until`` reading stops
    once nothing new came for ``idle_s``.
    """
    consumer = AIOKafkaConsumer(
        name,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        events: list[dict] = []
        ids: set[object] = set()
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    e = orjson.loads(r.value)
                    events.append(e)
                    if identity(e) not in ids and (counts is None or counts(e)):
                        ids.add(identity(e))
                        last_new = time.monotonic()
            if until is not None and len(ids) >= until:
                break
            if until is None and time.monotonic() - last_new > idle_s:
                break
        return events
    finally:
        await consumer.stop()


def tail(
    settings: StreamSettings, topic: str, data: Path | None, show: int, timeout_s: float
) -> int:
    """Print a sample of a topic's events; with data, wait for all of its scores."""
    name = topics.topic_name(topic, settings.topic_prefix)
    expected = expected_scores(data) if data is not None else None
    events = asyncio.run(
        read_topic(
            settings.kafka_bootstrap,
            name,
            until=expected,
            timeout_s=timeout_s,
            counts=is_event_score if expected is not None else None,
        )
    )
    if topic == topics.LEADS:
        return _leads(name, events, show)
    # A sample that reads as a story: one session's scores, from its start on.
    first = next((e["session_id"] for e in events if e.get("trigger") == "session_start"), None)
    story = sorted(
        (e for e in events if e.get("session_id") == first),
        key=lambda e: (e.get("trigger") != "session_start", e.get("hit_number") or 0),
    )
    for e in story[:show]:
        print(orjson.dumps(e).decode())
    distinct = {e.get("score_id") for e in events if is_event_score(e)}
    by_trigger = Counter(e.get("trigger") for e in events)
    print(
        f"{len(events)} events on {name} ({len(distinct)} distinct), by trigger: {dict(by_trigger)}"
    )
    if expected is not None:
        print(f"expected {expected} session-start and hit scores from {data}")
        return 0 if len(distinct) >= expected else 1
    return 0


def _leads(name: str, events: list[dict], show: int) -> int:
    """Print the latest leads, one line each, and how many there are by tier."""
    for e in events[-show:] if show > 0 else []:
        reasons = (e.get("reasons") or {}).get("top") or []
        why = ", ".join(
            f"{r['feature']} = {r['value']} ({r['contribution']:+.2f})" for r in reasons[:3]
        )
        print(
            f"{e.get('tier', '?'):4} p={e.get('probability')} session {e.get('session_id')} "
            f"after {e.get('hits')} hits, {e.get('utm_medium')} / {e.get('utm_source')}, "
            f"{e.get('device_category')}, {e.get('geo_city')}: {why}"
        )
    distinct = {e.get("lead_id") for e in events}
    by_tier = Counter(e.get("tier") for e in events)
    print(f"{len(events)} leads on {name} ({len(distinct)} distinct), by tier: {dict(by_tier)}")
    return 0
