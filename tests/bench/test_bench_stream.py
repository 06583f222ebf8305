"""The stream benchmark's count of the scores it waits for."""

from __future__ import annotations

from bench.stream import ScoreTally, expected_scores
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
