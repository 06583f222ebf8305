"""The worker's memory of what Redis holds of its sessions (stream/cache.py).

A session the worker wrote is not read back: its next hits and its close work on what
the worker knows. That must come to exactly what reading Redis every time would.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson

from artifact import load_model
from stream.cache import SessionCache
from stream.processor import Processor
from stream.state import RedisStore, SessionState
from tests.stream.test_hits_run import PARTITION, _records, _started, rows_and_hits  # noqa: F401


def _state(partition: int) -> SessionState:
    return SessionState(
        known=True,
        ready=True,
        client_id=None,
        start="2021-11-24T14:36:32+03:00",
        vector=np.zeros(3, dtype=np.float32),
        state=np.zeros(2),
        partition=partition,
    )


def test_the_least_recently_used_session_goes_first() -> None:
    cache = SessionCache(capacity=2)
    cache.put("a", _state(0), set())
    cache.put("b", _state(0), set())
    assert cache.get("a", 0) is not None  # a is used: b is the oldest now
    cache.put("c", _state(1), set())
    assert len(cache) == 2
    assert cache.get("b", 0) is None
    assert cache.get("a", 0) is not None and cache.get("c", 1) is not None


def test_a_session_is_known_only_on_its_partition_and_while_fresh() -> None:
    cache = SessionCache(max_age_s=0.05)
    cache.put("a", _state(3), {1, 2})
    assert cache.get("a", 2) is None  # asked for on another partition: not this one
    assert cache.get("a", 3) is None  # and that forgot it
    cache.put("a", _state(3), {1, 2})
    found = cache.get("a", 3)
    assert found is not None and found.applied == {1, 2}
    time.sleep(0.06)
    assert cache.get("a", 3) is None


def test_partitions_given_up_are_forgotten_alone() -> None:
    cache = SessionCache()
    for sid, partition in (("a", 0), ("b", 1), ("c", 1), ("d", 2)):
        cache.put(sid, _state(partition), set())
    cache.drop_partitions([1])
    assert [sid for sid in "abcd" if cache.get(sid, {"a": 0, "b": 1, "c": 1, "d": 2}[sid])] == [
        "a",
        "d",
    ]
    cache.clear()
    assert len(cache) == 0


class CountingStore(RedisStore):
    """A store that counts the sessions its reads ask Redis for."""

    read_sessions = 0

    async def send_read(self, sessions, hits=(), *, latest=True):  # type: ignore[no-untyped-def]
        self.read_sessions += len(sessions)
        return await super().send_read(sessions, hits, latest=latest)


async def test_hits_of_sessions_it_wrote_come_out_as_if_read_from_redis(
    store: RedisStore,
    model_path: Path,
    rows_and_hits: tuple[list[bytes], list[bytes]],  # noqa: F811
) -> None:
    rows, hits = rows_and_hits
    model = load_model(model_path)
    stores = [
        CountingStore(store.r, prefix=f"{store.prefix}:{name}", ttl_s=600, retries=2)
        for name in ("kept", "read")
    ]
    kept, read = (Processor(model, s) for s in stores)
    for p in (kept, read):
        await _started(p, rows)
    batches = [hits[i : i + 7] for i in range(0, len(hits), 7)]
    out: dict[str, list[bytes]] = {"kept": [], "read": []}
    for k, batch in enumerate(batches):
        read.cache.clear()  # this one reads Redis every time
        for name, p in (("kept", kept), ("read", read)):
            async with p.hits_batch(_records("t.hits", batch, 100 + 7 * k)) as o:
                out[name] += [payload for _, payload in o.scores]
    for p in (kept, read):
        closing = await p.close_due({PARTITION: float("inf")}, 1000)
        out["kept" if p is kept else "read"] += [payload for _, payload in closing.scores]
        await p.finish_close(closing.closed)

    def comparable(payloads: list[bytes]) -> list[tuple]:
        events = [orjson.loads(x) for x in payloads]
        return [(e["score_id"], e["probability"], e["trigger"], e["event_time"]) for e in events]

    assert comparable(out["kept"]) == comparable(out["read"])
    assert len(out["kept"]) == len(hits) + len(rows)
    # The same state in Redis, and the worker that kept what it wrote read no session
    # (session rows are never read: their write says which Redis held already).
    sids = {orjson.loads(r)["session_id"]: PARTITION for r in rows}
    a, _ = await stores[0].read(sids)
    b, _ = await stores[1].read(sids)
    for sid in sids:
        assert a[sid].state.tolist() == b[sid].state.tolist()
        assert a[sid].closed and b[sid].closed
    assert stores[0].read_sessions == len(rows)  # the read just above
    assert stores[1].read_sessions > stores[0].read_sessions
    assert len(kept.cache) == 0  # closed and out of the open sets: forgotten


async def test_a_redis_that_lost_writes_is_not_trusted_from_memory(
    store: RedisStore,
    model_path: Path,
    rows_and_hits: tuple[list[bytes], list[bytes]],  # noqa: F811
) -> None:
    rows, _ = rows_and_hits
    processor = Processor(load_model(model_path), store)
    await _started(processor, rows)
    assert len(processor.cache) == len(rows)
    processor.forget_state()  # what the worker does on RedisLost
    assert len(processor.cache) == 0


def test_a_ttl_is_set_again_only_when_due() -> None:
    cache = SessionCache()
    assert cache.ttl_due("a", 0, 60.0)  # unknown: set it
    cache.put("a", _state(0), set())
    assert not cache.ttl_due("a", 0, 60.0)
    assert cache.ttl_due("a", 0, 0.0)
    # A write that did not set it keeps the time it was last set.
    cache.put("a", _state(0), set(), ttl_at=time.monotonic() - 100.0)
    assert cache.ttl_due("a", 0, 60.0)


async def test_a_hits_write_sets_the_ttl_only_when_asked(store: RedisStore) -> None:
    from stream.state import HitWrite, SessionWrite

    start = SessionWrite(
        "s", None, "2021-11-24T14:36:32+03:00", np.zeros(3), b"{}", "session_start:"
    )
    await store.write([start], [])
    key = store.layout.session(0, "s")
    assert 590 < await store.r.ttl(key) <= 600
    await store.r.expire(key, 100)
    state = np.zeros(2)
    kept = HitWrite("s", state, [1], [("hit:1", b"{}")], refresh_ttl=False)
    await store.write([], [kept])
    assert await store.r.ttl(key) <= 100
    refreshed = HitWrite("s", state, [2], [("hit:2", b"{}")], refresh_ttl=True)
    await store.write([], [refreshed])
    assert await store.r.ttl(key) > 590


async def test_a_session_read_from_redis_is_not_taken_to_have_only_the_hits_it_was_read_for(
    store: RedisStore,
    model_path: Path,
    rows_and_hits: tuple[list[bytes], list[bytes]],  # noqa: F811
) -> None:
    rows, hits = rows_and_hits
    processor = Processor(load_model(model_path), store)
    await _started(processor, rows[:1])
    sid = orjson.loads(rows[0])["session_id"]
    mine = [h for h in hits if orjson.loads(h)["session_id"] == sid]
    async with processor.hits_batch(_records("t.hits", mine[:2], 100)) as first:
        stored = dict(first.scores)
    # A restart: the worker knows nothing. The next hit comes, then the first again.
    processor.cache.clear()
    async with processor.hits_batch(_records("t.hits", mine[2:3], 102)):
        pass
    async with processor.hits_batch(_records("t.hits", mine[:1], 103)) as again:
        assert again.duplicates == 1
    # The same copy as the first time, not a score made again on a later state.
    (copy,) = [payload for s, payload in again.scores]
    assert copy == [p for s, p in first.scores][0] and sid in stored
