from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.hits import STATE_INDEX
from training.dataset import load_dataset
from training.train import TrainConfig, snapshots, time_split


def test_no_snapshot_sees_the_conversion_or_later(data_dir: Path) -> None:
    ds = load_dataset(data_dir)
    snap = snapshots(ds, np.arange(len(ds.sessions)), TrainConfig(max_snapshot_hits=10_000))
    converted = ds.converted[snap.session] == 1
    assert converted.any() and (~converted).any()
    # A snapshot's state counts target hits seen: never one.
    assert (snap.states[:, STATE_INDEX["target_hits"]] == 0).all()
    # Its largest hit_number is below the session's first target hit.
    first = ds.first_target_hit[snap.session]
    seen = snap.states[:, STATE_INDEX["max_hit_number"]]
    assert (seen[converted] < first[converted]).all()
    assert (snap.label == ds.converted[snap.session]).all()


def test_snapshots_grow_one_hit_at_a_time(data_dir: Path) -> None:
    ds = load_dataset(data_dir)
    snap = snapshots(ds, np.arange(len(ds.sessions)), TrainConfig())
    first_session = snap.session[0]
    mine = snap.hits_seen[snap.session == first_session]
    assert mine.tolist() == list(range(1, len(mine) + 1))


def test_time_split_holds_out_the_last_weeks(data_dir: Path) -> None:
    ds = load_dataset(data_dir)
    split = time_split(ds.sessions, test_days=28, early_stop_days=14)
    dates = pd.to_datetime(ds.sessions["visit_date"])
    assert dates.iloc[split.fit].max() < dates.iloc[split.stop].min()
    assert dates.iloc[split.stop].max() < dates.iloc[split.test].min()
    assert len(split.fit) + len(split.stop) + len(split.test) == len(ds.sessions)


def test_too_short_a_window_is_a_clear_error(data_dir: Path) -> None:
    ds = load_dataset(data_dir)
    with pytest.raises(ValueError, match="too short"):
        time_split(ds.sessions, test_days=400, early_stop_days=14)


def test_trained_models_beat_chance_on_the_later_weeks(trained: dict) -> None:
    metrics = trained["metrics"]
    assert metrics["session_start"]["test_roc_auc"] > 0.55
    assert metrics["in_session"]["test_roc_auc"] > 0.55
    assert trained["stages"]["total"]["seconds"] > 0
    assert trained["stages"]["load"]["peak_rss_mb"] > 0
    assert Path(trained["model_dir"], "Pickled_model.pkl").is_file()


def test_the_report_holds_charts_metrics_and_the_model_comparison(trained: dict) -> None:
    import json

    report = Path(trained["model_dir"]) / "report"
    for chart in (
        "roc",
        "precision_recall",
        "calibration",
        "lift",
        "feature_importance",
        "auc_by_hits_seen",
    ):
        png = report / f"{chart}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", chart
        assert f"{chart}.png" in (report / "report.md").read_text()
    metrics = json.loads((report / "metrics.json").read_text())
    models = {(row["model"], row["split"]) for row in metrics["comparison"]}
    assert {
        ("xgboost (chosen)", "time"),
        ("logistic regression", "time"),
        ("random forest", "time"),
        ("xgboost (chosen params)", "random stratified"),
    } <= models
    assert metrics["tuning"]["trials"], "the search records its trials"


def test_test_scores_are_the_held_out_sessions_with_their_scores(trained: dict) -> None:
    scores = pd.read_csv(Path(trained["model_dir"]) / "report" / "test_scores.csv")
    start = trained["metrics"]["session_start"]
    assert len(scores) == start["test_sessions"]
    assert scores["converted"].mean() == pytest.approx(start["test_conversion_rate"])
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(scores["converted"], scores["p_session_start"])
    assert auc == pytest.approx(start["test_roc_auc"], abs=1e-4)


def test_the_card_tells_the_evaluated_model_from_the_shipped_one(trained: dict) -> None:
    shipped = trained["models"]["shipped"]
    start, in_session = shipped["session_start"], shipped["in_session"]
    # The shipped boosters are fitted on every session, with more trees than early
    # stopping chose on the fewer rows before the early-stopping weeks.
    assert start["rows"] == trained["training_data"]["sessions"] > start["early_stopped_rows"]
    assert start["trees"] >= start["early_stopped_trees"]
    assert start["trees"] >= trained["metrics"]["session_start"]["trees"]
    assert in_session["rows"] > in_session["early_stopped_rows"]
    for part in (start, in_session):
        cal = part["calibration"]
        assert cal["window"] == "most recent days" and cal["positives"] >= 30
        assert cal["from"] <= trained["training_data"]["window"]["test_to"]


def test_the_report_gives_calibration_on_the_test_weeks(trained: dict) -> None:
    report = (Path(trained["model_dir"]) / "report" / "report.md").read_text()
    assert "## Calibration on the test weeks" in report
    for part in ("session_start", "in_session"):
        rows = trained["metrics"][part]["test_calibration"]
        for kind in ("calibrated", "uncalibrated"):
            assert rows[kind]["sum_predicted_over_target"] > 0
            assert 0 <= rows[kind]["ece"] < 0.1
            assert f"| {rows[kind]['ece']:.4f} |" in report


def test_on_small_data_the_early_stopping_weeks_reach_back_to_enough_conversions(
    data_dir: Path,
) -> None:
    ds = load_dataset(data_dir)
    two_weeks = time_split(ds.sessions, 28, 14)
    assert ds.converted[two_weeks.stop].sum() < 100  # 20,000 sessions: too few in two weeks
    split = time_split(ds.sessions, 28, 14, ds.converted, min_stop_positives=100)
    assert ds.converted[split.stop].sum() >= 100
    assert split.window["early_stop_from"] < two_weeks.window["early_stop_from"]
    np.testing.assert_array_equal(split.test, two_weeks.test)  # the test weeks stay
    assert len(split.fit) + len(split.stop) == len(two_weeks.fit) + len(two_weeks.stop)
