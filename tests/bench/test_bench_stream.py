"""The stream benchmark's count of the scores it waits for, and its latency figures."""

from __future__ import annotations

from bench.stream import ScoreTally, expected_scores, percentiles, split_warmup
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
