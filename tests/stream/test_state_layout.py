"""The session hash's layout on the real Redis: all of a session in one hash.

The hit-state counters are one packed field (``hs``), what the row gave another
(``row``), and each score a field of its own beside them: no other key holds a session.
"""

from __future__ import annotations

import numpy as np
import pytest

from contracts import keys
from features.hits import STATE_INDEX, empty_state
from stream.state import HitWrite, RedisStore, SessionWrite

pytestmark = pytest.mark.redis

START = "2021-11-24T14:36:32+03:00"
PARTITION = 1


def _session(sid: str, client_id: str | None = "1.2") -> SessionWrite:
    return SessionWrite(
        session_id=sid,
        client_id=client_id,
        start=START,
        vector=np.arange(4, dtype=np.float64),
        score_json=b"{}",
        history_field="session_start:",
        partition=PARTITION,
        event_ms=1.6377e12,
        channel=["cpc", "google", "(none)", "mobile", "Moscow"],
    )


def _hits(sid: str, state: np.ndarray, numbers: list[int]) -> HitWrite:
    return HitWrite(
        session_id=sid,
        state=state,
        applied=numbers,
        scores=[(f"hit:{n}", b"{}") for n in numbers],
        partition=PARTITION,
        event_ms=1.0e12,
    )


async def test_a_sessions_counters_are_one_packed_field(store: RedisStore) -> None:
    state = empty_state()
    state[STATE_INDEX["hits"]] = 3.0
    state[STATE_INDEX["max_hit_time_ms"]] = 90_123.5
    key = store.layout.session(PARTITION, "a")
    await store.write([_session("a")], [])
    fresh = await store.r.hgetall(key)
    # Present from the session's start, as the empty state.
    assert keys.unpack_hit_state(fresh[b"hs"], empty_state().tolist()) == empty_state().tolist()
    await store.write([], [_hits("a", state, [1, 2, 3])])
    stored = await store.r.hgetall(key)
    assert keys.unpack_hit_state(stored[b"hs"], empty_state().tolist()) == state.tolist()
    # One hash holds all of the session: row, counters, its scores and its latest.
    assert set(stored) == {
        b"row",
        b"hs",
        b"session_start:",
        b"hit:1",
        b"hit:2",
        b"hit:3",
        b"latest",
    }
    (states, applied) = await store.read({"a": PARTITION}, [("a", 2), ("a", 4)])
    assert states["a"].state.tolist() == state.tolist()
    assert states["a"].partition == PARTITION
    # A hit is applied exactly when its score is in the hash: no set of its own.
    assert applied == [True, False]
    # No other key of the store names the session.
    every = [k.decode() async for k in store.r.scan_iter(match=f"{store.prefix}:*")]
    assert [k for k in every if {"a", "{a}"} & set(k.split(":"))] == [key]
    assert 0 < await store.r.ttl(key) <= store.ttl


async def test_a_sessions_row_is_one_packed_field(store: RedisStore) -> None:
    await store.write([_session("a"), _session("anon", client_id=None)], [])
    raw = await store.r.hget(store.layout.session(PARTITION, "a"), keys.ROW_FIELD)
    row = keys.unpack_row(raw)
    assert row == keys.StoredRow(
        START,
        "1.2",
        np.arange(4, dtype=np.float32).tobytes(),  # the features kept as float32
        1.6377e12,
        ("cpc", "google", "(none)", "mobile", "Moscow"),
    )
    states, _ = await store.read({"a": PARTITION, "anon": PARTITION})
    a = states["a"]
    assert a.known and not a.ready and a.start == START and a.client_id == "1.2"
    assert a.vector is not None and a.vector.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert states["anon"].known and states["anon"].client_id is None
    # A second row for a known session changes nothing (the hash has its row).
    again = _session("a", client_id="other")
    again.vector = np.ones(4)
    await store.write([again], [])
    assert await store.r.hget(store.layout.session(PARTITION, "a"), keys.ROW_FIELD) == raw


def test_a_row_packs_and_unpacks_whatever_its_bytes() -> None:
    row = keys.StoredRow(START, None, bytes(range(256)), 1.5, ("é", "", "x|y", "a:b", "(none)"))
    assert keys.unpack_row(keys.pack_row(row)) == row


async def test_an_unknown_session_reads_as_empty(store: RedisStore) -> None:
    states, applied = await store.read({"nobody": PARTITION}, [("nobody", 1)])
    assert not states["nobody"].known and not states["nobody"].ready
    assert states["nobody"].state.tolist() == empty_state().tolist()
    assert states["nobody"].latest is None and applied == [False]


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
