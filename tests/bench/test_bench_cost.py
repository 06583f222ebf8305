"""The cost benchmark's reading of callgrind's output."""

from __future__ import annotations

from pathlib import Path

from bench.cost import _totals


def test_the_total_is_the_run_counted_not_the_empty_summary(tmp_path: Path) -> None:
    # With collection off at the start, callgrind writes "summary: 0" before the totals.
    out = tmp_path / "worker.callgrind"
    out.write_text("events: Ir\nsummary: 0\nfn=main\n12 34\ntotals: 2091522095\n")
    assert _totals(out) == 2_091_522_095


def test_the_reasons_cost_is_the_compared_runs_ratio() -> None:
    from bench.cost import reasons_cost

    on = {
        "worker_per_event": 284_369,
        "redis_per_event": 51_220,
        "total_per_event": 335_589,
        "scores_by_tier": [7984, 1066, 617],
    }
    off = {"worker_per_event": 253_587, "redis_per_event": 48_100, "total_per_event": 301_687}
    c = reasons_cost(on, off)
    assert c["worker"] == 0.1214 and c["total"] == 0.1124
    assert c["warm_or_hot_share"] == 0.1741 and c["worker_per_event_without"] == 253_587
