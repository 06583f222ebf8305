from pathlib import Path

from bench.train import render, run


def test_the_training_benchmark_runs_end_to_end_on_a_small_set(tmp_path: Path) -> None:
    result = run(15_000, tmp_path, seed=3, tune_budget_s=3.0)
    assert {"generate", "check-data", "train: load", "train: total"} <= set(result["stages"])
    assert result["stages"]["generate"]["peak_rss_mb"] > 0
    assert result["test_sessions"] > 1_000
    assert 0.5 < result["bayes_auc"] < 1.0
    assert 0.5 < result["session_start_auc"] < 1.0
    table = render(result)
    assert "Bayes AUC of truth.csv" in table and "| generate |" in table
