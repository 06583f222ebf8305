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
    assert trained["stages"]["total_s"] > 0
    assert Path(trained["model_dir"], "Pickled_model.pkl").is_file()
