"""A benchmark run's figures kept with what it ran on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import results


def test_a_run_is_kept_with_its_command_commit_machine_and_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results, "RESULTS", tmp_path / "results")
    path = results.save("cost", {"redis_per_event": 59233}, ["--masters", "3"])
    assert path.parent == tmp_path / "results" and path.name.endswith(".json")
    record = json.loads(path.read_text())
    assert record["bench"] == "cost"
    assert record["command"] == "python -m bench.cost --masters 3"
    assert record["figures"] == {"redis_per_event": 59233}
    assert len(record["commit"]) == 12 and record["commit"] in path.name
    assert record["machine"]["cpus"] >= 1 and record["machine"]["cpu"]
    assert record["packages"]["faust-streaming"] == "0.15.3"
    assert record["redis_server"].count(".") == 2 and record["kafka"].count(".") == 2


def _record(at: str, bench: str, figures: dict, changed: bool = False) -> tuple[str, dict]:
    record = {
        "bench": bench,
        "at": at,
        "command": f"python -m bench.{bench}",
        "commit": "abc123def456",
        "tree_changed": changed,
        "figures": figures,
    }
    return f"{at}-{bench}-abc123def456.json", record


COST = {
    "masters": 1,
    "worker_per_event": 231481,
    "redis_per_event": 49322,
    "events": 8762,
    "scores": 9667,
}


def test_the_table_takes_the_newest_clean_run_of_each_benchmark_and_redis() -> None:
    three = {
        **COST,
        "masters": 3,
        "redis_per_event": 58703,
        "redis_per_event_by_master": [19819, 19638, 19246],
        "redis_share_by_master": [0.338, 0.335, 0.328],
    }
    kept = [
        _record("20261201T100000Z", "cost", {**COST, "redis_per_event": 60000}),
        _record("20261202T100000Z", "cost", COST),
        _record("20261202T110000Z", "cost", {**COST, "redis_per_event": 1}, changed=True),
        _record("20261202T120000Z", "cost", three),
        _record("20261202T130000Z", "stream", {"one_worker": {"events_per_s": 15636}}),
    ]
    api = {
        "api": {
            "predict_at_200_rps": {"p99_ms": 3.0},
            "predict_saturated": {"rps": 2768.4},
            "batch_10000_rows": {"p50_ms": 125.7},
        },
        "baseline": {"predict_saturated": {"rps": 36.7}, "batch_10000_rows": {"p50_ms": 223.2}},
    }
    kept.append(_record("20261202T140000Z", "api", api))
    rows = results.table(kept).splitlines()[2:]
    assert len(rows) == 4  # the API, one Redis, three masters, the stream
    assert "p99 3.0 ms at 200 requests/s; 2,768 requests/s" in rows.pop(0)
    assert "Redis 49,322" in rows[0] and "20261202T100000Z" in rows[0]
    assert "58,703 in all (19,819, 19,638, 19,246 a master: 33.8 %" in rows[1]
    assert "one worker 15,636 events/s" in rows[2] and "2026-12-02" in rows[2]


def test_the_readmes_current_figures_are_the_kept_runs() -> None:
    """The README's table of current figures is what ``python -m bench.results readme``
    writes from the files under bench/results: run it after keeping a new run."""
    text = results.README.read_text()
    assert results.BEGIN in text and results.END in text
    assert results.readme_block(text, results.records()) == text, (
        "the README's figures differ from bench/results: python -m bench.results readme"
    )


def test_a_training_run_shows_its_time_memory_and_roc_auc_against_the_ceiling() -> None:
    stage = {"seconds": 100.0, "peak_rss_mb": 2048.0}
    train = {
        "sessions": 1860042,
        "hits": 15766036,
        "stages": {
            "generate": {"seconds": 300.0, "peak_rss_mb": 3000.0},
            "check-data": {"seconds": 60.0, "peak_rss_mb": 2500.0},
            "train: load": stage,
            "train: total": {"seconds": 476.0, "peak_rss_mb": 6471.7},
        },
        "session_start_auc": 0.72781,
        "bayes_auc": 0.73432,
        "by_hits_seen": [
            {"hits_seen": "1", "in_session_auc": 0.73634},
            {"hits_seen": "21+", "in_session_auc": 0.83281},
            {"hits_seen": "none", "in_session_auc": None},
        ],
    }
    (row,) = results.table([_record("20261202T150000Z", "train", train)]).splitlines()[2:]
    assert "1,860,042 sessions, 15,766,036 hits: training 476 s at a peak of 6.32 GB" in row
    assert "(with generating and checking the data 836 s)" in row
    assert "0.7278 at session start against the Bayes AUC 0.7343" in row
    assert "0.7363 after 1 hit(s), 0.8328 after 21+" in row


def test_a_cost_run_that_compared_the_reasons_says_what_they_cost() -> None:
    compared = {
        **COST,
        "worker_per_event": 284253,
        "reasons_cost": {
            "worker_per_event_without": 253801,
            "worker": 0.12,
            "warm_or_hot_share": 0.1741,
        },
    }
    (row,) = results.table([_record("20261203T130000Z", "cost", compared)]).splitlines()[2:]
    assert "worker 284,253" in row
    assert "(17.4% of scores) the worker's 253,801: reasons +12.0%" in row
    (plain,) = results.table([_record("20261203T130000Z", "cost", COST)]).splitlines()[2:]
    assert "reasons" not in plain


def test_a_reasons_run_shows_each_way_per_call_and_the_agreement() -> None:
    figures = {
        "trees": 441,
        "per_call_us": {
            "compiled_walk": {"1": 20.6, "4": 36.2, "64": 368.1},
            "xgboost_path": {"1": 321.8, "4": 398.1, "64": 2125.3},
            "treeshap": {"1": 1819.1, "4": 6243.6, "64": 94662.7},
        },
        "agreement_with_treeshap": {
            "sessions": 20000,
            "explained": 600,
            "top_reason": 0.96,
            "top_three": 0.7,
            "top_three_shared": 0.88,
        },
    }
    (row,) = results.table([_record("20261203T210000Z", "reasons", figures)]).splitlines()[2:]
    assert "1 row a call: compiled walk 20.6 µs, xgboost path 321.8 µs" in row
    assert "64 rows a call: compiled walk 368.1 µs" in row and "treeshap 94,662.7 µs" in row
    assert "the same top reason 96%, 88% of the top three shared" in row
