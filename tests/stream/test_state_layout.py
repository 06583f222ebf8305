"""The state hash's layout on the real Redis: the hit-state counters in one packed field.

States written before the packed field kept one field per counter; they still read.
"""

from __future__ import annotations

import numpy as np
import pytest

from contracts import keys
from features.hits import STATE_INDEX, STATE_NAMES, empty_state
from stream.state import HitWrite, RedisStore, SessionWrite

pytestmark = pytest.mark.redis

START = "2021-11-24T14:36:32+03:00"


def _session(sid: str) -> SessionWrite:
    return SessionWrite(
        session_id=sid,
        client_id="1.2",
        start=START,
        vector=np.arange(4, dtype=np.float64),
        score_json=b"{}",
        history_field="session_start:",
    )


def _hits(sid: str, state: np.ndarray, numbers: list[int]) -> HitWrite:
    return HitWrite(
        session_id=sid,
        state=state,
        applied=numbers,
        scores=[(f"hit:{n}", b"{}") for n in numbers],
        event_ms=1.0e12,
    )


async def test_a_sessions_counters_are_one_packed_field(store: RedisStore) -> None:
    state = empty_state()
    state[STATE_INDEX["hits"]] = 3.0
    state[STATE_INDEX["max_hit_time_ms"]] = 90_123.5
    await store.write([_session("a")], [])
    fresh = await store.r.hgetall(keys.session_key("a", store.prefix))
    # Present from the session's start: an absent field means the earlier layout.
    assert keys.unpack_hit_state(fresh[b"hs"], empty_state().tolist()) == empty_state().tolist()
    await store.write([], [_hits("a", state, [1, 2, 3])])
    stored = await store.r.hgetall(keys.session_key("a", store.prefix))
    assert not [f for f in stored if f.startswith(keys.STATE_FIELD_PREFIX.encode())]
    (states, applied) = await store.read(["a"], [("a", 2), ("a", 4)])
    assert states["a"].state.tolist() == state.tolist()
    # A hit is applied exactly when its score is in the history: no set of its own.
    assert applied == [True, False]
    session_keys = await store.r.keys(f"{store.prefix}:{{a}}:*")
    assert sorted(session_keys) == sorted(
        k.encode()
        for k in (
            keys.session_key("a", store.prefix),
            keys.score_history_key("a", store.prefix),
            keys.latest_score_key("a", store.prefix),
        )
    )


async def test_a_state_written_one_field_per_counter_still_reads(store: RedisStore) -> None:
    key = keys.session_key("old", store.prefix)
    await store.r.hset(
        key,
        mapping={
            "start": START,
            "ready": "1",
            keys.state_field("hits"): "7.0",
            keys.state_field("card_views"): "2.0",
        },
    )
    states, _ = await store.read(["old"])
    got = dict(zip(STATE_NAMES, states["old"].state.tolist(), strict=True))
    assert got["hits"] == 7.0 and got["card_views"] == 2.0
    assert got["max_hit_time_ms"] == -1.0  # never written: the empty state's value
    # Its next write stores the packed field, which is what is read from then on.
    newer = states["old"].state.copy()
    newer[STATE_INDEX["hits"]] = 8.0
    await store.write([], [_hits("old", newer, [8])])
    states, _ = await store.read(["old"])
    assert states["old"].state.tolist() == newer.tolist()


async def test_an_unknown_session_reads_as_empty(store: RedisStore) -> None:
    states, _ = await store.read(["nobody"])
    assert not states["nobody"].known
    assert states["nobody"].state.tolist() == empty_state().tolist()


def test_a_shorter_packed_vector_reads_with_the_later_counters_empty() -> None:
    empty = [0.0, -1.0, 0.0]
    assert keys.unpack_hit_state(keys.pack_hit_state([5.0, 9.5]), empty) == [5.0, 9.5, 0.0]
    assert keys.unpack_hit_state(keys.pack_hit_state([1.0, 2.0, 3.0, 4.0]), empty) == [
        1.0,
        2.0,
        3.0,
    ]
    values = [0.1, 1e300, -0.0]
    assert keys.unpack_hit_state(keys.pack_hit_state(values), empty) == values
