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


def test_with_held_out_days_the_shipped_model_is_judged_after_its_data(tmp_path: Path) -> None:
    result = run(40_000, tmp_path, seed=4, tune_budget_s=3.0, holdout=0.2)
    held = result["holdout"]
    assert held["holdout_sessions"] + held["train_sessions"] <= result["sessions"]
    assert held["holdout_from"] > "2021-11"  # the last fifth of the days: after the drop
    assert 0.5 < held["roc_auc"] < held["truth"]["bayes_auc"] < 1.0
    assert 0.0 < held["truth"]["calibrated"]["sum_predicted_over_target"] < 2.0
    assert {"split-days", "score-holdout"} <= set(result["stages"])
    for against in ("outcomes", "truth"):
        assert result["test_calibration"][against]["ece"] >= 0
    table = render(result)
    assert "Σpredicted / Σtrue" in table and "Held-out days from" in table
