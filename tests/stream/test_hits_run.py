"""Hits batches that overlap: the next batch is read and computed before the last lands.

The worker sends the next batch's state read before it computes a batch, and computes
the next batch while Redis runs the batch's write; so a batch's read comes before the
writes of the batches just ahead of it. These run the processor on the
real Redis of the local stack, with the test model, against the same hits processed one
batch at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import msgpack
import orjson
import pytest

from artifact import load_model
from contracts import topics
from features.target import TARGET_ACTIONS
from stream.processor import HitsBatch, HitsRun, Processor, Record
from stream.replay import build_events
from stream.state import RedisStore

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def rows_and_hits(data_dir: Path) -> tuple[list[bytes], list[bytes]]:
    """Sessions with at least four hits each, and all their hits in event order."""
    events = build_events(data_dir, limit_sessions=300)
    count: dict[bytes, int] = defaultdict(int)
    for topic, key, _ in events:
        if topic == topics.HITS:
            count[key] += 1
    keep = {key for key, n in count.items() if n >= 4}
    rows = [v for t, k, v in events if t == topics.SESSIONS and k in keep][:12]
    chosen = {orjson.loads(r)["session_id"].encode() for r in rows}
    hits = [v for t, k, v in events if t == topics.HITS and k in chosen]
    return rows, hits


# The input partition of every record here: the sessions' keys are under its hash tag.
PARTITION = 2


def _records(topic: str, values: list[bytes], first: int) -> list[Record]:
    return [
        Record(v, topic, PARTITION, first + i, timestamp_ms=1000.0 + i)
        for i, v in enumerate(values)
    ]


def _where(sids: Iterable[str]) -> dict[str, int]:
    """Sessions with their partition, as the store's reads take them."""
    return {sid: PARTITION for sid in sids}


def _scores(batches: list[HitsBatch]) -> dict[tuple[str, int], dict]:
    out = {}
    for b in batches:
        for _, payload in b.out.scores:
            e = orjson.loads(payload)
            out[(e["session_id"], e["hit_number"])] = e
    return out


def _comparable(e: dict) -> tuple:
    return (e["score_id"], e["probability"], e["event_time"], e["model_version"])


async def _state(store: RedisStore, sids: list[str]) -> dict:
    states, _ = await store.read(_where(sids))
    return {
        sid: (st.state.tolist(), st.latest is not None, st.outcome) for sid, st in states.items()
    }


async def _computed(
    processor: Processor, run: HitsRun, values: list[bytes], first: int
) -> HitsBatch:
    """Parse, read and compute a batch of hits in a run, without writing it."""
    batch = processor.hits_parse(_records("t.hits", values, first))
    return await processor.hits_compute(await processor.hits_read(batch, run), run)


async def _started(processor: Processor, rows: list[bytes]) -> None:
    started = await processor.sessions(_records("t.sessions", rows, 0))
    await processor.release(started.released)


@pytest.fixture()
async def started(
    store: RedisStore, model_path: Path, rows_and_hits: tuple[list[bytes], list[bytes]]
) -> tuple[Processor, list[bytes]]:
    """A processor whose sessions are stored and released, and their hits."""
    rows, hits = rows_and_hits
    processor = Processor(load_model(model_path), store)
    await _started(processor, rows)
    return processor, hits


async def test_a_batch_read_before_the_last_write_lands_sees_what_it_did(
    store: RedisStore, model_path: Path, rows_and_hits: tuple[list[bytes], list[bytes]]
) -> None:
    rows, hits = rows_and_hits
    model = load_model(model_path)
    sids = [orjson.loads(r)["session_id"] for r in rows]
    thirds = [hits[: len(hits) // 3], hits[len(hits) // 3 : 2 * len(hits) // 3]]
    thirds.append(hits[2 * len(hits) // 3 :])

    # One batch at a time, each written before the next is read.
    one = Processor(model, RedisStore(store.r, prefix=store.prefix + ":one", ttl_s=600, retries=2))
    await _started(one, rows)
    sequential = []
    offset = 100
    for part in thirds:
        async with one.hits_batch(_records("t.hits", part, offset)) as out:
            sequential.append(HitsBatch(out=out, n_records=len(part)))
        offset += len(part)

    # Overlapping: every batch's read is sent before any is computed, and every batch
    # is computed before any write is sent.
    two = Processor(model, store)
    await _started(two, rows)
    async with two.hits_run() as run:
        reads = []
        offset = 100
        for part in thirds:
            reads.append(await two.hits_read(two.hits_parse(_records("t.hits", part, offset)), run))
            offset += len(part)
        assert run.held == set(sids)
        done = [await two.hits_compute(batch, run) for batch in reads]
        for batch in done:
            await (await two.hits_write(batch, run))
    assert not two.gate.held

    want, got = _scores(sequential), _scores(done)
    assert len(got) == len(hits)
    # The scores match but for their scored_at (a batch's own clock).
    assert {k: _comparable(e) for k, e in got.items()} == {
        k: _comparable(e) for k, e in want.items()
    }
    assert await _state(store, sids) == await _state(one.store, sids)
    assert sum(b.out.duplicates for b in done) == 0


async def test_a_hit_again_in_a_later_batch_of_the_run_is_a_duplicate_with_the_same_copy(
    started: tuple[Processor, list[bytes]],
) -> None:
    processor, hits = started
    first, again = hits[:20], hits[5:25]
    async with processor.hits_run() as run:
        a = processor.hits_parse(_records("t.hits", first, 10))
        b = processor.hits_parse(_records("t.hits", again, 15))
        # Both reads are sent before the first batch is computed: Redis knows nothing of it.
        a, b = await processor.hits_read(a, run), await processor.hits_read(b, run)
        a = await processor.hits_compute(a, run)
        b = await processor.hits_compute(b, run)
        await (await processor.hits_write(a, run))
        await (await processor.hits_write(b, run))
    assert b.out.duplicates == 15
    by_id = {orjson.loads(p)["score_id"]: p for _, p in a.out.scores}
    copies = [p for _, p in b.out.scores if orjson.loads(p)["score_id"] in by_id]
    # The 15 hits of the first batch come out again as the very same bytes, taken from
    # the run (the first batch's write had not landed when this batch was read).
    assert len(copies) == 15
    assert all(by_id[orjson.loads(p)["score_id"]] == p for p in copies)
    assert len(b.out.scores) == 20


async def test_a_hit_delivered_again_later_gets_its_stored_copy_from_the_compact_history(
    started: tuple[Processor, list[bytes]],
) -> None:
    processor, hits = started
    async with processor.hits_batch(_records("t.hits", hits, 10)) as out:
        published = dict(((sid, orjson.loads(p)["hit_number"]), p) for sid, p in out.scores)
    # A later run (after a restart, say) knows only what Redis has.
    async with processor.hits_batch(_records("t.hits", hits, 10)) as again:
        copies = dict(((sid, orjson.loads(p)["hit_number"]), p) for sid, p in again.scores)
    assert again.duplicates == len(hits)
    assert copies == published and len(published) == len(hits)
    # Each session is one compact listpack up to 64 fields, with the stack's
    # hash-max-listpack-value of 1 KB and hash-max-listpack-entries of 64
    # (scripts/stack.sh): its score entries are small, one per score published; a
    # Warm or Hot one carries its reasons too, and still fits a listpack value.
    r = processor.store.r
    sids = {sid for sid, _ in published}
    for sid in sids:
        session = processor.store.layout.session(PARTITION, sid)
        compact = await r.hlen(session) <= 64
        assert await r.object("encoding", session) == (b"listpack" if compact else b"hashtable")
        entries = {
            name: entry for name, entry in (await r.hgetall(session)).items() if b":" in name
        }
        numbers = {n for s, n in published if s == sid}
        assert set(entries) == {b"session_start:", *(f"hit:{n}".encode() for n in numbers)}
        for e in entries.values():
            tier = msgpack.unpackb(e)[6] if len(msgpack.unpackb(e)) > 6 else 0
            assert len(e) < (64 if tier == 0 else 1024)


async def test_a_failed_batch_leaves_the_run_as_it_was(
    started: tuple[Processor, list[bytes]],
) -> None:
    processor, hits = started
    async with processor.hits_run() as run:
        a = await _computed(processor, run, hits[:10], 10)
        before = {sid: s.state.state.tolist() for sid, s in run.sessions.items()}

        def broken(*_: object) -> None:
            raise RuntimeError("model failed")

        processor.model.score_in_session = broken  # type: ignore[method-assign, assignment]
        b = await _computed(processor, run, hits[10:20], 20)
        assert b.failed and len(b.out.dead_letters) == 10
        assert {sid: s.state.state.tolist() for sid, s in run.sessions.items()} == before
        await (await processor.hits_write(a, run))
        await (await processor.hits_write(b, run))
    pairs = [(h["session_id"], h["hit_number"]) for h in map(orjson.loads, hits[:20])]
    _, applied = await processor.store.read(_where(s for s, _ in pairs), pairs)
    assert applied == [True] * 10 + [False] * 10


def _retarget(hit: bytes, number: int) -> bytes:
    """A copy of a hit as a conversion (a target action) with another hit number."""
    event = orjson.loads(hit)
    event["event_action"] = sorted(TARGET_ACTIONS)[0]
    event["hit_number"] = number
    return orjson.dumps(event)


async def test_a_batch_reads_latest_scores_only_for_sessions_with_a_target_hit(
    started: tuple[Processor, list[bytes]],
) -> None:
    processor, hits = started
    by_session: dict[str, list[bytes]] = defaultdict(list)
    for h in hits:
        by_session[orjson.loads(h)["session_id"]].append(h)
    plain, converting = list(by_session)[:2]
    values = [
        *(h for h in by_session[plain][:2] if not _is_target(h)),
        _retarget(by_session[converting][0], 1000),
    ]
    processor.cache.clear()  # a worker that has not seen them: it reads them from Redis
    async with processor.hits_run() as run:
        batch = await processor.hits_read(processor.hits_parse(_records("t.hits", values, 0)), run)
        assert batch.reading is not None
        states, _ = await batch.reading
    assert not states[plain].has_latest and states[plain].latest is None
    stored = await processor.store.latest_scores(_where([converting, plain]))
    assert states[converting].has_latest and states[converting].latest == stored[0]
    assert stored[0] is not None and orjson.loads(stored[0])["trigger"] == "session_start"


async def test_a_conversion_first_in_its_batch_carries_the_stored_latest_score(
    started: tuple[Processor, list[bytes]],
) -> None:
    processor, hits = started
    sid = orjson.loads(hits[0])["session_id"]
    (start_score,) = await processor.store.latest_scores(_where([sid]))
    # A batch of another session's hits first, in a run of its own, then the conversion.
    other = [h for h in hits if orjson.loads(h)["session_id"] != sid][:3]
    async with processor.hits_run() as run:
        await (await processor.hits_write(await _computed(processor, run, other, 0), run))
    async with processor.hits_run() as run:
        batch = await _computed(processor, run, [_retarget(hits[0], 1)], 10)
        await (await processor.hits_write(batch, run))
    ((who, raw),) = batch.out.outcomes
    outcome = orjson.loads(raw)
    assert who == sid and outcome["outcome"] == "converted"
    assert start_score is not None and outcome["last_score"] == orjson.loads(start_score)


async def test_a_conversion_read_without_its_latest_score_reads_it(
    started: tuple[Processor, list[bytes]],
) -> None:
    processor, hits = started
    sid = orjson.loads(hits[0])["session_id"]
    (start_score,) = await processor.store.latest_scores(_where([sid]))
    batch = processor.hits_parse(_records("t.hits", [_retarget(hits[0], 1)], 0))
    batch.states, batch.applied = await processor.store.read(
        _where([sid]), [(sid, 1)], latest=False
    )
    assert not batch.states[sid].has_latest
    await processor.hit_batches.apply(batch, batch.states, batch.applied)
    ((_, raw),) = batch.out.outcomes
    assert start_score is not None
    assert orjson.loads(raw)["last_score"] == orjson.loads(start_score)


def _is_target(hit: bytes) -> bool:
    return orjson.loads(hit).get("event_action") in TARGET_ACTIONS
