"""Session batches that overlap: a batch's read is sent before the last batch's write.

The worker sends the next sessions batch's read before it computes a batch, so a row
seen again in the next batch is not in Redis yet when that batch is read. These run the
processor on the real Redis of the local stack, with the test model.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from artifact import load_model
from contracts.history import history_field
from stream.processor import Processor, SessionsRun
from stream.state import RedisStore
from tests.stream.test_hits_run import PARTITION, _records, _where, rows_and_hits  # noqa: F401

pytestmark = pytest.mark.redis


@pytest.fixture()
def fresh(
    store: RedisStore,
    model_path: Path,
    rows_and_hits: tuple[list[bytes], list[bytes]],  # noqa: F811
) -> tuple[Processor, list[bytes]]:
    """A processor on an empty store, and session rows none of which it has seen."""
    return Processor(load_model(model_path), store), rows_and_hits[0]


async def test_a_row_again_in_a_later_batch_of_the_run_is_a_duplicate_with_the_same_copy(
    fresh: tuple[Processor, list[bytes]],
) -> None:
    processor, rows = fresh
    store = processor.store
    sids = [orjson.loads(r)["session_id"] for r in rows[:9]]
    run = SessionsRun()
    a = processor.sessions_parse(_records("t.sessions", rows[:6], 0))
    b = processor.sessions_parse(_records("t.sessions", rows[3:9], 6))
    # Both reads are sent before either batch is computed: Redis knows nothing of "a".
    a, b = await processor.sessions_read(a), await processor.sessions_read(b)
    a = await processor.sessions_compute(a, run)
    b = await processor.sessions_compute(b, run)
    await (await processor.sessions_write(a, run))
    await (await processor.sessions_write(b, run))

    first = dict(a.out.scores)
    assert list(first) == sids[:6]
    assert b.out.duplicates == 3
    # The three rows seen again come out as the very same bytes, taken from the run.
    again = dict(b.out.scores)
    assert sorted(again) == sorted(sids[3:9]) and len(b.out.scores) == 6
    assert [again[s] for s in sids[3:6]] == [first[s] for s in sids[3:6]]
    assert list(run.released) == sids
    assert a.out.released == _where(sids[:6]) and b.out.released == _where(sids[3:9])
    # Redis holds one start score per session: the batch that stored it first.
    start_field = history_field("session_start", None)
    stored = await store.stored_scores([(s, PARTITION, start_field) for s in sids])
    assert stored[:6] == [first[s] for s in sids[:6]]
    assert stored[6:] == [again[s] for s in sids[6:]]
    states, _ = await store.read(_where(sids))
    assert all(st.known and not st.ready for st in states.values())  # released later


async def test_a_failed_batch_is_all_dead_letters_and_stores_nothing(
    fresh: tuple[Processor, list[bytes]],
) -> None:
    processor, rows = fresh

    def broken(*_: object) -> None:
        raise RuntimeError("model failed")

    processor.model.score_session_vectors = broken  # type: ignore[method-assign, assignment]
    run = SessionsRun()
    batch = await processor.sessions_read(
        processor.sessions_parse(_records("t.sessions", rows[:4], 0))
    )
    batch = await processor.sessions_compute(batch, run)
    await (await processor.sessions_write(batch, run))
    assert [stage for stage, _ in batch.out.dead_letters] == ["score"] * 4
    assert not batch.out.scores and not run.released
    states, _ = await processor.store.read(_where(orjson.loads(r)["session_id"] for r in rows[:4]))
    assert not any(st.known for st in states.values())


async def test_a_row_redis_held_before_this_worker_is_published_as_the_stored_copy(
    fresh: tuple[Processor, list[bytes]], model_path: Path
) -> None:
    first, rows = fresh
    # A worker stores the first six rows, then goes (a restart: its memory is gone).
    await first.sessions(_records("t.sessions", rows[:6], 0))
    start_field = history_field("session_start", None)
    sids = [orjson.loads(r)["session_id"] for r in rows[:9]]
    stored_before = await first.store.stored_scores([(s, PARTITION, start_field) for s in sids])
    again = Processor(load_model(model_path), first.store)
    # The same rows come again, with three new ones; rows 3 to 5 twice, in two batches
    # of one run, both computed before either write lands.
    run = SessionsRun()
    a = again.sessions_parse(_records("t.sessions", rows[:6], 0))
    b = again.sessions_parse(_records("t.sessions", rows[3:9], 6))
    a, b = await again.sessions_read(a), await again.sessions_read(b)
    a = await again.sessions_compute(a, run)
    b = await again.sessions_compute(b, run)
    await (await again.sessions_write(a, run))
    await (await again.sessions_write(b, run))
    # Every copy of a row stored before is the stored start score, byte for byte.
    for batch in (a, b):
        for sid, payload in batch.out.scores:
            k = sids.index(sid)
            if k < 6:
                assert payload == stored_before[k], sid
    assert a.out.duplicates == 6 and b.out.duplicates == 3
    stored_after = await again.store.stored_scores([(s, PARTITION, start_field) for s in sids])
    assert stored_after[:6] == stored_before[:6]
    new = dict(b.out.scores)
    assert stored_after[6:] == [new[s] for s in sids[6:]]
