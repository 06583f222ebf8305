"""One record's failure is that record's dead letter: the rest of its batch goes on.

The processor runs on the real Redis of the local stack with the test model; the
failures are made by wrapping the model or the features so that one record fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from artifact import load_model
from contracts import limits
from features.hits import STATE_INDEX
from stream import hit_batches
from stream.processor import Processor
from stream.state import ParkedHit, RedisStore
from tests.stream.test_hits_run import PARTITION, _records, _where, rows_and_hits  # noqa: F401

pytestmark = pytest.mark.redis


@pytest.fixture()
def processor(store: RedisStore, model_path: Path) -> Processor:
    return Processor(load_model(model_path), store, hits_topic="t.hits")


async def _started(processor: Processor, data: tuple[list[bytes], list[bytes]]) -> list[bytes]:
    """Store and release the sessions; return their hits."""
    rows, hits = data
    started = await processor.sessions(_records("t.sessions", rows, 0))
    await processor.release(started.released)
    return hits


def _letters(out: Any) -> list[dict]:
    return [orjson.loads(payload) for _, payload in out.dead_letters]


async def test_a_row_whose_features_fail_alone_is_the_only_dead_letter(
    processor: Processor,
    rows_and_hits: tuple[list[bytes], list[bytes]],  # noqa: F811
) -> None:
    rows = rows_and_hits[0][:6]
    poisoned = orjson.loads(rows[2])["session_id"]
    model = processor.model
    vectors = model.session_vectors

    def features(cols: Any) -> np.ndarray:
        if poisoned in cols["session_id"]:
            raise ValueError("a feature failed")
        return vectors(cols)

    model.session_vectors = features  # type: ignore[method-assign]
    out = await processor.sessions(_records("t.sessions", rows, 0))
    letters = _letters(out)
    assert [(d["stage"], d["kind"], d["offset"]) for d in letters] == [("features", "failed", 2)]
    assert "ValueError: a feature failed" in letters[0]["error"]
    assert len(out.scores) == 5 and poisoned not in {sid for sid, _ in out.scores}
    assert out.refusals == {("features", "failed"): 1}


async def test_a_session_whose_probability_is_not_finite_is_a_dead_letter(
    processor: Processor,
    rows_and_hits: tuple[list[bytes], list[bytes]],  # noqa: F811
) -> None:
    rows = rows_and_hits[0][:4]
    model = processor.model
    score = model.score_session_vectors

    def nan_first(x: np.ndarray) -> np.ndarray:
        p = score(x)
        if len(x) > 1 or np.array_equal(x[0], first_vector):
            p = p.copy()
            p[0] = np.nan
        return p

    first_vector = model.session_vectors(
        {k: [v] for k, v in orjson.loads(rows[0]).items()}  # one row's columns
    )[0]
    model.score_session_vectors = nan_first  # type: ignore[method-assign]
    out = await processor.sessions(_records("t.sessions", rows, 0))
    assert [(d["stage"], d["offset"]) for d in _letters(out)] == [("score", 0)]
    assert len(out.scores) == 3


async def test_a_hit_that_fails_alone_is_left_out_and_its_session_goes_on_without_it(
    processor: Processor,
    rows_and_hits: tuple[list[bytes], list[bytes]],  # noqa: F811
) -> None:
    hits = await _started(processor, rows_and_hits)
    batch = hits[:30]
    target = orjson.loads(batch[1])
    model = processor.model
    score = model.score_in_session

    states_read, _ = await processor.store.read(_where([target["session_id"]]))
    target_vector = states_read[target["session_id"]].vector

    def failing(session_x: np.ndarray, states: np.ndarray) -> np.ndarray:
        # Whatever batch holds the target hit fails, and so does the hit alone.
        mine = (states[:, STATE_INDEX["max_hit_number"]] == target["hit_number"]) & (
            session_x == target_vector
        ).all(axis=1)
        if mine.any():
            raise RuntimeError("model failed on this hit")
        return score(session_x, states)

    model.score_in_session = failing  # type: ignore[method-assign]
    out = await processor.hits(_records("t.hits", batch, 100))
    letters = _letters(out)
    assert [(d["stage"], d["offset"]) for d in letters] == [("score", 101)]
    scored = {(orjson.loads(p)["session_id"], orjson.loads(p)["hit_number"]) for _, p in out.scores}
    expected = {(h["session_id"], h["hit_number"]) for h in map(orjson.loads, batch)}
    assert scored == expected - {(target["session_id"], target["hit_number"])}
    # Stored as applied: every hit but the refused one.
    pairs = sorted(expected)
    _, applied = await processor.store.read(_where(s for s, _ in pairs), pairs)
    assert dict(zip(pairs, applied, strict=True)) == {
        p: p != (target["session_id"], target["hit_number"]) for p in pairs
    }


async def test_a_hit_whose_features_fail_alone_is_the_only_dead_letter(
    processor: Processor,
    rows_and_hits: tuple[list[bytes], list[bytes]],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hits = await _started(processor, rows_and_hits)
    increments = hit_batches.hit_increments
    poisoned = orjson.loads(hits[3])

    def features(cols: dict) -> np.ndarray:
        if any(
            n == poisoned["hit_number"]
            and a == poisoned["event_action"]
            and t == poisoned["hit_time"]
            for n, t, a in zip(
                cols["hit_number"], cols["hit_time"], cols["event_action"], strict=True
            )
        ):
            raise KeyError("bad action")
        return increments(cols)

    monkeypatch.setattr(hit_batches, "hit_increments", features)
    out = await processor.hits(_records("t.hits", hits[:10], 100))
    letters = _letters(out)
    assert letters and {d["stage"] for d in letters} == {"features"}
    assert 103 in {d["offset"] for d in letters}
    assert len(out.scores) == 10 - len(letters)


async def test_a_session_takes_only_so_many_parked_hits(
    store: RedisStore, processor: Processor
) -> None:
    # Parked on the partition the hit below is read from: a session's keys are there.
    waiting = [ParkedHit("s", b"h", PARTITION, i) for i in range(limits.PARKED_HITS_MAX)]
    assert all(await store.park(waiting))
    assert await store.park(
        [ParkedHit("s", b"h", PARTITION, 10_000), ParkedHit("t", b"h", PARTITION, 1)]
    ) == [None, True]
    hit = {"session_id": "s", "hit_number": 9, "hit_time": None, "event_action": "view_card"}
    out = await processor.hits(_records("t.hits", [orjson.dumps(hit)], 500))
    assert [(d["stage"], d["kind"], d["offset"]) for d in _letters(out)] == [
        ("park", "parked_full", 500)
    ]
    assert out.parked == 0 and out.scores == []
    assert await store.r.llen(store.layout.pending(PARTITION, "s")) == limits.PARKED_HITS_MAX


async def test_a_batch_that_fails_only_as_a_whole_is_scored_hit_by_hit(
    processor: Processor,
    rows_and_hits: tuple[list[bytes], list[bytes]],  # noqa: F811
) -> None:
    hits = await _started(processor, rows_and_hits)
    model = processor.model
    score = model.score_in_session

    def one_at_a_time(session_x: np.ndarray, states: np.ndarray) -> np.ndarray:
        if len(states) > 1:
            raise MemoryError("a batch too large for the model")
        return score(session_x, states)

    model.score_in_session = one_at_a_time  # type: ignore[method-assign]
    out = await processor.hits(_records("t.hits", hits[:12], 100))
    assert out.dead_letters == []
    assert len(out.scores) == 12
