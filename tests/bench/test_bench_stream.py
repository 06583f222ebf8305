"""The stream benchmark's count of the scores it waits for, and its latency figures."""

from __future__ import annotations

import orjson

from bench.stream import (
    ScoreTally,
    expected_identities,
    expected_scores,
    first_scores,
    percentiles,
    split_warmup,
)
from contracts import topics

S, H = topics.SESSIONS, topics.HITS


def test_a_hit_counts_once_its_session_has_a_row_in_any_chunk() -> None:
    tally = ScoreTally()
    tally.add([(H, b"a", b""), (H, b"a", b""), (S, b"b", b"")])  # a's row comes later
    assert tally.expected == 1
    tally.add([(S, b"a", b""), (H, b"b", b"")])
    assert tally.expected == 5  # two rows, a's two hits, b's hit


def test_orphan_hits_get_no_score() -> None:
    assert expected_scores([(S, b"a", b""), (H, b"a", b""), (H, b"zz", b"")]) == 2


def test_the_warm_up_is_the_first_seconds_after_the_earliest_send() -> None:
    pairs = [(1_000.0, 300.0), (1_400.0, 5.0), (3_000.0, 7.0), (1_200.0, 250.0), (2_999.0, 9.0)]
    warm, measured = split_warmup(pairs, 2.0)
    assert sorted(warm) == [5.0, 9.0, 250.0, 300.0]  # sent before 1,000 + 2,000 ms
    assert measured == [7.0]


def test_percentiles_of_nothing_are_none() -> None:
    assert percentiles([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    assert percentiles([4.0, 8.0])["max_ms"] == 8.0


def _event(topic: str, sid: str, hit: int | None = None) -> tuple[str, bytes, bytes]:
    value = {"session_id": sid} if hit is None else {"session_id": sid, "hit_number": hit}
    return (topic, sid.encode(), orjson.dumps(value))


def test_the_scores_waited_for_are_named_and_copies_count_once() -> None:
    events = [_event(H, "a", 1), _event(S, "a"), _event(H, "a", 2), _event(H, "zz", 1)]
    wanted = expected_identities(events)
    assert wanted == {("a", "session_start", None), ("a", "hit", 1), ("a", "hit", 2)}
    # Four records, one a copy published again (later): three scores, when each first
    # came out; the orphan's hit is not waited for.
    stamps = [
        (("a", "session_start", None), 10.0),
        (("a", "hit", 1), 12.0),
        (("a", "hit", 1), 30.0),
        (("a", "hit", 2), 14.0),
    ]
    first, missing = first_scores(stamps, wanted)
    assert first == {
        ("a", "session_start", None): 10.0,
        ("a", "hit", 1): 12.0,
        ("a", "hit", 2): 14.0,
    }
    assert missing == set()
    # As many records as expected, but one is a copy: a score is missing, and says so.
    first, missing = first_scores(stamps[:3], wanted)
    assert len(stamps[:3]) == len(wanted) and missing == {("a", "hit", 2)}
