"""What the worker's integration tests check against: the data's own truth."""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from bench.procs import redis_client
from contracts import keys, topics
from contracts.leads import LeadEvent
from contracts.scores import TIER_NAMES
from features.hits import combine, empty_state, hit_increments
from features.target import TARGET_ACTIONS
from stream.replay import build_events, send_events
from stream.settings import StreamSettings
from stream.tail import is_event_score, read_topic

Event = tuple[str, bytes, bytes]


class Truth:
    """Sessions and hits of a generated data set, and what the worker must make of them."""

    def __init__(self, data: Path) -> None:
        self.events: list[Event] = build_events(data)
        self.sessions: dict[str, dict[str, Any]] = {}
        self.hits: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for t, _, v in self.events:
            row = orjson.loads(v)
            if t == topics.SESSIONS:
                self.sessions[row["session_id"]] = row
        for t, _, v in self.events:
            row = orjson.loads(v)
            if t == topics.HITS and row["session_id"] in self.sessions:
                self.hits[row["session_id"]].append(row)
        # Orphan hits (no session row) wait for a row that never comes: leave them out.
        self.events = [
            (t, k, v)
            for t, k, v in self.events
            if t == topics.SESSIONS or orjson.loads(v)["session_id"] in self.sessions
        ]

    @property
    def expected_scores(self) -> int:
        return len(self.sessions) + sum(len(h) for h in self.hits.values())

    def converted(self, sid: str) -> bool:
        return any(h["event_action"] in TARGET_ACTIONS for h in self.hits[sid])

    def state(self, sid: str) -> np.ndarray:
        """The session's hit state after all its hits, each applied exactly once."""
        state = empty_state()
        hits = self.hits[sid]
        if not hits:
            return state
        increments = hit_increments(
            {c: [h[c] for h in hits] for c in ("hit_number", "hit_time", "event_action")}
        )
        for inc in increments:
            state = combine(state, inc)
        return state


def check_exactly_once(
    truth: Truth, settings: StreamSettings, scores: list[dict], strict: bool = True
) -> None:
    """Every expected score exists, copies agree, each hit applied once.

    Copies of a score are identical (``strict``), or, where Redis was rebuilt and the
    lost scores were made again, agree on everything but ``scored_at``.
    """
    by_id: dict[str, list[dict]] = defaultdict(list)
    for e in scores:
        by_id[e["score_id"]].append(e)
    for copies in by_id.values():
        if strict:
            assert all(c == copies[0] for c in copies), copies
        else:
            same = [{k: v for k, v in c.items() if k != "scored_at"} for c in copies]
            assert all(c == same[0] for c in same), copies
    got = {(e["session_id"], e["trigger"], e["hit_number"]) for e in scores}
    for sid, hits in truth.hits.items():
        assert (sid, "session_start", None) in got, sid
        for h in hits:
            assert (sid, "hit", h["hit_number"]) in got, (sid, h["hit_number"])
    r = redis_client(settings)
    layout = keys.Layout(settings.redis_key_prefix, settings.topic_partitions)
    for sid in truth.sessions:
        state, applied = stored_state(r, sid, layout)
        assert applied == {h["hit_number"] for h in truth.hits[sid]}, sid
        np.testing.assert_allclose(state, truth.state(sid), err_msg=sid)


def expected_leads(truth: Truth, scores: dict[tuple[str, str, int | None], dict]) -> set:
    """The (session, tier, score_id) leads the tier rule gives: walking each session's
    start score and then its hits in the order they were sent (one partition per session:
    the order they were applied), up to its first target hit, a score makes a lead when
    its tier is above the highest one the session made a lead of. ``scores`` holds the
    scores by (session, trigger, hit number)."""
    want = set()
    for sid in truth.sessions:
        made = 0
        steps = [scores[(sid, "session_start", None)]]
        for h in truth.hits[sid]:
            if h["event_action"] in TARGET_ACTIONS:
                break
            steps.append(scores[(sid, "hit", h["hit_number"])])
        for e in steps:
            code = TIER_NAMES.index(e["tier"])
            if code > made:
                made = code
                want.add((sid, e["tier"], e["score_id"]))
    return want


def check_leads(
    truth: Truth,
    scores: dict[tuple[str, str, int | None], dict],
    leads: list[dict],
    strict: bool = True,
) -> list[LeadEvent]:
    """Exactly one lead per session and tier, the ones the tier rule gives; return them.

    Copies of a lead are identical (``strict``), or, where Redis was rebuilt and a lost
    lead was made again, agree on everything but ``created_at`` (its score's
    ``scored_at``, which ``scores`` then holds for one of the copies only).
    """
    copies: dict[tuple[str, str], set[bytes]] = defaultdict(set)
    for x in leads:
        same = x if strict else {k: v for k, v in x.items() if k != "created_at"}
        copies[(x["session_id"], x["tier"])].add(orjson.dumps(same, option=orjson.OPT_SORT_KEYS))
    assert all(len(c) == 1 for c in copies.values()), [c for c in copies.values() if len(c) > 1]
    first = {}
    for x in leads:
        first.setdefault((x["session_id"], x["tier"]), LeadEvent.model_validate(x))
    got = {(x.session_id, x.tier, x.score_id) for x in first.values()}
    assert got == expected_leads(truth, scores)
    return list(first.values())


def session_hash(r: Any, sid: str, layout: keys.Layout) -> dict[bytes, bytes]:
    """Read a session's hash from Redis, on the partition its id is produced to."""
    return cast(dict[bytes, bytes], r.hgetall(layout.session(layout.partition_of(sid), sid)))


def stored_state(r: Any, sid: str, layout: keys.Layout) -> tuple[np.ndarray, set[int]]:
    """Read a session's hit state and applied hit numbers (its hit scores) from Redis."""
    h = session_hash(r, sid, layout)
    state = empty_state()
    packed = h.get(keys.HIT_STATE_FIELD.encode())
    if packed is not None:
        state = np.array(keys.unpack_hit_state(packed, state.tolist()), dtype=np.float64)
    applied = {int(name[4:]) for name in h if name.startswith(b"hit:")}
    return state, applied


def read_scores(settings: StreamSettings, until: int, timeout_s: float = 180) -> list[dict]:
    """Read the scores topic until `until` distinct start and hit scores arrived."""
    return asyncio.run(
        read_topic(
            settings.kafka_bootstrap,
            topics.topic_name(topics.SCORES, settings.topic_prefix),
            until=until,
            timeout_s=timeout_s,
            counts=is_event_score,
        )
    )


def read_all(settings: StreamSettings, topic: str, idle_s: float = 5.0) -> list[dict]:
    """Read a topic until nothing new comes for idle_s."""
    return asyncio.run(
        read_topic(
            settings.kafka_bootstrap,
            topics.topic_name(topic, settings.topic_prefix),
            until=None,
            timeout_s=120,
            idle_s=idle_s,
            identity=lambda e: orjson.dumps(e, option=orjson.OPT_SORT_KEYS),
        )
    )


def topic_size(settings: StreamSettings, topic: str) -> int:
    """Return how many records a (prefixed) topic holds: the sum of its end offsets."""

    async def run() -> int:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        from stream.kafka import client_options

        name = topics.topic_name(topic, settings.topic_prefix)
        consumer = AIOKafkaConsumer(name, **client_options(settings))
        await consumer.start()
        try:
            parts = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
            assert parts, f"{name} has no partitions"
            return sum((await consumer.end_offsets(parts)).values())
        finally:
            await consumer.stop()

    return asyncio.run(run())


def supervise(worker: Any, sender: Any, timeout_s: float = 300) -> int:
    """Start the worker again whenever it exits, as a supervisor would, until the sender
    is done; return how many times it was started again."""
    restarts = 0
    deadline = time.monotonic() + timeout_s
    while sender.is_alive() and time.monotonic() < deadline:
        if not worker.alive():
            restarts += 1
            worker.start()
        time.sleep(0.5)
    sender.join()
    if not worker.alive():
        restarts += 1
        worker.start()
        worker.wait_ready()
    return restarts


def kill_9_while_sending(
    worker: Any,
    settings: StreamSettings,
    events: list[Event],
    seed: int,
    least: int = 3,
    most: int = 6,
) -> int:
    """Send ``events`` at 600 a second while the running worker is killed with SIGKILL
    at random moments 0.5 to 2.5 s apart and started again each time: at least ``least``
    times, even after the last event went out, and at most ``most``. Return the kills
    once every event was sent."""
    sender = threading.Thread(
        target=lambda: asyncio.run(send_events(settings, events, rate=600, progress=False))
    )
    sender.start()
    rng = random.Random(seed)
    kills = 0
    try:
        while (sender.is_alive() or kills < least) and kills < most:
            time.sleep(rng.uniform(0.5, 2.5))
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait()
            kills += 1
            worker.start()
            worker.wait_ready()
    finally:
        sender.join()
    return kills
