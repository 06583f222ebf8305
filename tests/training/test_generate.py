import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from features.columns import HIT_COLUMNS, SESSION_COLUMNS
from features.target import TARGET_ACTIONS
from training.generate import generate

MSK = timezone(timedelta(hours=3))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen")
    generate(out, 20_000, seed=3, progress=False, chunk_sessions=7_000)
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_have_the_real_columns_in_order(small: Path) -> None:
    sessions = pd.read_csv(small / "ga_sessions.csv", nrows=5)
    hits = pd.read_csv(small / "ga_hits.csv", nrows=5)
    assert list(sessions.columns) == list(SESSION_COLUMNS)
    assert list(hits.columns) == list(HIT_COLUMNS)
    assert list(pd.read_csv(small / "truth.csv", nrows=1).columns) == ["session_id", "p_convert"]


def test_same_seed_same_bytes(small: Path, tmp_path: Path) -> None:
    generate(tmp_path, 20_000, seed=3, progress=False, chunk_sessions=7_000)
    for name in ("ga_sessions.csv", "ga_hits.csv", "truth.csv"):
        assert _digest(tmp_path / name) == _digest(small / name)


def test_identifiers_carry_the_visit_time(small: Path) -> None:
    s = pd.read_csv(small / "ga_sessions.csv", dtype=str)
    assert s["session_id"].is_unique
    parts = s["session_id"].str.split(".", expand=True)
    assert (parts[1] == parts[2]).all()
    for _, row in s.head(200).iterrows():
        ts = int(row["session_id"].split(".")[1])
        local = datetime.fromtimestamp(ts, MSK)
        assert local.strftime("%Y-%m-%d %H:%M:%S") == f"{row['visit_date']} {row['visit_time']}"
        first = int(row["client_id"].split(".")[1])
        assert first <= ts


def test_null_conventions_and_types(small: Path) -> None:
    s = pd.read_csv(small / "ga_sessions.csv")
    assert s["visit_number"].dtype.kind == "i"
    assert s["session_id"].notna().all()
    assert 0.5 < s["device_os"].isna().mean() < 0.65
    assert 0.5 < s["utm_keyword"].isna().mean() < 0.65
    assert s["device_model"].isna().mean() > 0.97
    h = pd.read_csv(small / "ga_hits.csv")
    assert h["event_value"].isna().all()
    assert (h["hit_type"] == "event").all()
    assert h["hit_time"].dtype.kind == "f"


def test_coarse_period_has_hour_rounded_times_and_no_hit_time(small: Path) -> None:
    s = pd.read_csv(small / "ga_sessions.csv", dtype=str)
    h = pd.read_csv(small / "ga_hits.csv", dtype={"session_id": str})
    old = s[s["visit_date"] < "2021-10-01"]
    assert old["visit_time"].str.endswith(":00:00").all()
    assert old["device_os"].isna().all()
    assert h[h["session_id"].isin(old["session_id"])]["hit_time"].isna().all()


def test_hits_increase_within_a_session_and_some_are_orphans(small: Path) -> None:
    s = pd.read_csv(small / "ga_sessions.csv", dtype=str)
    h = pd.read_csv(small / "ga_hits.csv", dtype={"session_id": str})
    assert (h.groupby("session_id")["hit_number"].diff().dropna() > 0).all()
    assert (~h["session_id"].isin(s["session_id"])).any()


def test_conversion_matches_its_probabilities(small: Path) -> None:
    h = pd.read_csv(small / "ga_hits.csv", dtype={"session_id": str})
    truth = pd.read_csv(small / "truth.csv", dtype={"session_id": str})
    converted = set(h.loc[h["event_action"].isin(TARGET_ACTIONS), "session_id"])
    rate = truth["session_id"].isin(converted).mean()
    assert 0.018 < rate < 0.036
    assert abs(truth["p_convert"].mean() - rate) < 0.006


def test_intent_shows_before_the_first_target_hit(small: Path) -> None:
    h = pd.read_csv(small / "ga_hits.csv", dtype={"session_id": str})
    target = h["event_action"].isin(TARGET_ACTIONS)
    first = h[target].groupby("session_id")["hit_number"].min()
    h["first_target"] = h["session_id"].map(first)
    before = h[h["first_target"].isna() | (h["hit_number"] < h["first_target"])]
    card = before["event_action"].isin(
        ["view_card", "view_new_card", "go_to_car_card", "photos_view", "gallery_open"]
    )
    share = card.groupby(before["first_target"].notna()).mean()
    assert share[True] > share[False]


def test_clients_return_with_rising_visit_numbers_on_the_same_device(small: Path) -> None:
    s = pd.read_csv(small / "ga_sessions.csv", dtype={"session_id": str, "client_id": str})
    per_client = len(s) / s["client_id"].nunique()
    assert 1.2 < per_client < 1.5
    s["ts"] = s["session_id"].str.split(".").str[1].astype(int)
    repeat = s[s["client_id"].duplicated(keep=False)].sort_values(["client_id", "visit_number"])
    assert len(repeat) > 1000
    by_client = repeat.groupby("client_id")
    # steps of one, or more where a session row was lost with its orphan hits
    steps = by_client["visit_number"].diff().dropna()
    assert (steps >= 1).all() and (steps == 1).mean() > 0.99
    assert (by_client["ts"].diff().dropna() >= 0).all()
    assert (repeat.groupby("client_id")["device_category"].nunique() == 1).all()


def test_hit_numbers_stay_within_500_and_hit_dates_follow_the_clock(small: Path) -> None:
    h = pd.read_csv(small / "ga_hits.csv", dtype={"session_id": str})
    assert h["hit_number"].between(1, 500).all()
    start = pd.to_datetime(h["session_id"].str.split(".").str[1].astype(int), unit="s")
    local = start + pd.Timedelta(hours=3) + pd.to_timedelta(h["hit_time"].fillna(0), unit="ms")
    assert (local.dt.strftime("%Y-%m-%d") == h["hit_date"]).all()


def test_expected_auc_of_the_truth() -> None:
    import numpy as np

    from training.generate import expected_auc

    assert expected_auc(np.full(1000, 0.03)) == pytest.approx(0.5, abs=0.01)
    # two groups: p=0.5 and p=0.01, equal sizes: AUC = P(pos from high group ...)
    p = np.r_[np.full(500, 0.5), np.full(500, 0.01)]
    pos_hi, pos_lo = 0.5 * 500, 0.01 * 500
    neg_hi, neg_lo = 0.5 * 500, 0.99 * 500
    exact = (pos_hi * neg_lo + 0.5 * (pos_hi * neg_hi + pos_lo * neg_lo)) / (
        (pos_hi + pos_lo) * (neg_hi + neg_lo)
    )
    assert expected_auc(p) == pytest.approx(exact, abs=0.01)


def test_chunks_that_end_with_a_session_without_hits(tmp_path: Path) -> None:
    # Tiny chunks make it likely that some chunk's last session has no hits.
    generate(tmp_path, 400, seed=31, progress=False, chunk_sessions=7)
    s = pd.read_csv(tmp_path / "ga_sessions.csv", dtype=str)
    h = pd.read_csv(tmp_path / "ga_hits.csv", dtype={"session_id": str})
    assert 380 <= len(s) <= 400  # a few rows are dropped to leave orphan hits
    assert (~s["session_id"].isin(h["session_id"])).any()
    assert (h.groupby("session_id")["hit_number"].min() >= 1).all()
