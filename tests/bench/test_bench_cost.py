"""The cost benchmark's reading of callgrind's output."""

from __future__ import annotations

from pathlib import Path

from bench.cost import _totals


def test_the_total_is_the_run_counted_not_the_empty_summary(tmp_path: Path) -> None:
    # With collection off at the start, callgrind writes "summary: 0" before the totals.
    out = tmp_path / "worker.callgrind"
    out.write_text("events: Ir\nsummary: 0\nfn=main\n12 34\ntotals: 2091522095\n")
    assert _totals(out) == 2_091_522_095
