"""Hot / Warm / Cold thresholds: the chooser on made-up scores, and the trained model's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from artifact import load_model
from artifact.tiers import COLD, HOT, WARM, Tiers
from training.config import TrainConfig
from training.dataset import load_dataset
from training.tiers import (
    FALLBACK_SESSIONS,
    choice_rows,
    choose_tiers,
    quantile_thresholds,
    tier_figures,
    true_probabilities,
)
from training.train import session_features


def _shares(tiers: Tiers, p: np.ndarray) -> tuple[float, float]:
    codes = tiers.codes(p)
    return float(np.mean(codes == HOT)), float(np.mean(codes == WARM))


@pytest.mark.parametrize("n", [1_000, 20_017, 200_000])
def test_the_thresholds_put_the_asked_shares_in_hot_and_warm(n: int) -> None:
    rng = np.random.default_rng(n)
    p = 1.0 / (1.0 + np.exp(-rng.normal(-4.0, 1.2, size=n)))
    warm, hot = quantile_thresholds(p, 0.01, 0.04)
    hot_share, warm_share = _shares(Tiers(warm=warm, hot=hot), p)
    # Distinct scores: off by at most one session of rounding.
    assert hot_share == pytest.approx(0.01, abs=1.0 / n)
    assert warm_share == pytest.approx(0.04, abs=2.0 / n)
    assert 0.0 < warm < hot < 1.0


def test_other_shares_come_from_the_arguments() -> None:
    p = np.linspace(0.001, 0.5, 10_000)
    warm, hot = quantile_thresholds(p, 0.1, 0.2)
    assert _shares(Tiers(warm=warm, hot=hot), p) == pytest.approx((0.1, 0.2), abs=1e-4)


def test_a_threshold_falls_between_scores_not_on_one() -> None:
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    warm, hot = quantile_thresholds(p, 0.1, 0.2)
    assert hot == pytest.approx(0.85)  # halfway between the top score and the next
    assert warm == pytest.approx(0.65)
    assert Tiers(warm=warm, hot=hot).codes(p).tolist() == [2, 1, 1, 0, 0, 0, 0, 0, 0, 0]


def test_figures_per_tier_on_a_hand_made_example() -> None:
    tiers = Tiers(warm=0.5, hot=0.8)
    p = np.array([0.9, 0.85, 0.6, 0.55, 0.52, 0.3, 0.2, 0.1, 0.1, 0.05])
    y = np.array([1, 0, 1, 1, 0, 1, 0, 0, 0, 0])
    truth = np.array([0.7, 0.5, 0.4, 0.4, 0.4, 0.2, 0.1, 0.1, np.nan, 0.1])
    f = tier_figures(tiers, p, y, truth)
    assert list(f) == ["hot", "warm", "cold"]
    # 2 hot sessions, 1 conversion; 3 warm, 2; 5 cold, 1; 4 conversions in all (0.4).
    assert f["hot"]["sessions"] == 2 and f["hot"]["share"] == pytest.approx(0.2)
    assert f["hot"]["conversion_rate"] == pytest.approx(0.5)
    assert f["hot"]["capture"] == pytest.approx(0.25)
    assert f["hot"]["lift"] == pytest.approx(0.5 / 0.4)
    assert f["warm"]["conversion_rate"] == pytest.approx(2 / 3)
    assert f["warm"]["capture"] == pytest.approx(0.5)
    assert f["warm"]["lift"] == pytest.approx((2 / 3) / 0.4)
    assert f["cold"]["share"] == pytest.approx(0.5)
    assert f["cold"]["capture"] == pytest.approx(0.25)
    assert sum(row["capture"] for row in f.values()) == pytest.approx(1.0)
    assert f["hot"]["mean_true_probability"] == pytest.approx(0.6)
    # The session truth.csv does not list is left out of the cold mean.
    assert f["cold"]["mean_true_probability"] == pytest.approx(0.125)
    json.dumps(f)  # plain values only


def test_no_conversion_and_empty_tiers_give_none_not_a_division_error() -> None:
    tiers = Tiers(warm=0.5, hot=0.8)
    f = tier_figures(tiers, np.array([0.1, 0.2, 0.3]), np.zeros(3))
    assert f["hot"]["sessions"] == 0 and f["hot"]["conversion_rate"] is None
    assert f["cold"]["conversion_rate"] == 0.0
    assert f["cold"]["capture"] is None and f["cold"]["lift"] is None


def test_ties_go_to_the_higher_tier_and_hot_may_equal_warm() -> None:
    p = np.full(500, 0.02)
    p[:3] = 0.3
    warm, hot = quantile_thresholds(p, 0.01, 0.04)
    # The top 1 % (5 sessions) reaches into the tie at 0.02: every tied session is Hot.
    assert warm == hot == pytest.approx(0.02)
    assert _shares(Tiers(warm=warm, hot=hot), p) == (1.0, 0.0)


def test_degenerate_scores_still_give_valid_thresholds() -> None:
    # One session, saturated scores, scores of exactly 0: thresholds stay inside (0, 1).
    for p in (np.array([0.3]), np.ones(50), np.zeros(50), np.array([0.0, 1.0, np.nan])):
        warm, hot = quantile_thresholds(p, 0.01, 0.04)
        assert 0.0 < warm <= hot < 1.0
        Tiers(warm=warm, hot=hot)
    assert quantile_thresholds(np.array([0.3]), 0.01, 0.04) == (0.3, 0.3)
    assert Tiers(*quantile_thresholds(np.ones(50), 0.01, 0.04)).of(1.0) == "hot"


def test_no_scores_and_nonsense_shares_are_refused() -> None:
    with pytest.raises(ValueError, match="no scores"):
        quantile_thresholds(np.array([]), 0.01, 0.04)
    with pytest.raises(ValueError, match="no scores"):
        quantile_thresholds(np.array([np.nan]), 0.01, 0.04)
    for hot_share, warm_share in ((0.0, 0.04), (0.6, 0.5), (0.01, -0.1), (1.0, 0.0)):
        with pytest.raises(ValueError, match="tier shares"):
            quantile_thresholds(np.array([0.1, 0.2]), hot_share, warm_share)


def test_the_chooser_takes_the_shipped_thresholds_and_the_evaluated_figures() -> None:
    rng = np.random.default_rng(3)
    shipped = rng.uniform(0.0, 0.2, size=10_000)
    evaluated = rng.uniform(0.3, 0.9, size=4_000)  # another scale: its own thresholds
    y = (rng.uniform(size=4_000) < evaluated / 4).astype(int)
    tiers = choose_tiers(
        shipped,
        (evaluated, y, None),
        hot_share=0.01,
        warm_share=0.04,
        chosen_on="made up",
        measured_on="made up too",
    )
    assert tiers.hot == pytest.approx(np.quantile(shipped, 0.99), abs=1e-3)
    assert tiers.warm == pytest.approx(np.quantile(shipped, 0.95), abs=1e-3)
    card = tiers.as_dict()
    json.dumps(card)
    assert card["hot_share"] == 0.01 and card["warm_share"] == 0.04
    assert card["shipped_shares"]["hot"] == pytest.approx(0.01, abs=1e-4)
    weeks = card["test_weeks"]
    # At the shipped thresholds every evaluated score would be Hot; at its own, 1 %.
    assert weeks["hot"]["share"] == pytest.approx(0.01, abs=1e-3)
    assert weeks["warm"]["share"] == pytest.approx(0.04, abs=1e-3)
    assert weeks["hot"]["threshold"] == pytest.approx(np.quantile(evaluated, 0.99), abs=2e-3)
    assert weeks["warm"]["threshold"] == pytest.approx(np.quantile(evaluated, 0.95), abs=2e-3)
    assert weeks["hot"]["conversion_rate"] > weeks["cold"]["conversion_rate"]
    assert "mean_true_probability" not in weeks["hot"]


def test_without_test_week_sessions_nothing_is_measured() -> None:
    empty = np.array([])
    tiers = choose_tiers(
        np.linspace(0.01, 0.2, 100),
        (empty, empty, None),
        hot_share=0.01,
        warm_share=0.04,
        chosen_on="last sessions",
        measured_on="",
    )
    assert "test_weeks" not in tiers.as_dict()
    assert "no session" in tiers.as_dict()["measured_on"]


def test_with_no_test_week_the_last_sessions_are_chosen_on() -> None:
    days = pd.Series(pd.date_range("2021-01-01", periods=FALLBACK_SESSIONS + 500, freq="h"))
    shuffled = days.sample(frac=1.0, random_state=1).reset_index(drop=True)
    rows, where = choice_rows(shuffled, np.array([], dtype=int))
    assert len(rows) == FALLBACK_SESSIONS and "test weeks hold none" in where
    assert shuffled.iloc[rows].min() == days.iloc[500]
    test = np.array([4, 2])
    assert choice_rows(shuffled, test) == (test, "test weeks")


def test_truth_is_read_only_where_there_is_a_file(tmp_path: Path) -> None:
    assert true_probabilities(tmp_path, np.array(["a"])) is None
    (tmp_path / "truth.csv").write_text("session_id,p_convert\n007,0.25\nb,0.5\n")
    got = true_probabilities(tmp_path, np.array(["b", "missing", "007"], dtype=object))
    assert got is not None
    np.testing.assert_array_equal(got[[0, 2]], [0.5, 0.25])
    assert np.isnan(got[1])


def test_the_trained_model_ships_its_tiers_in_the_artifact_card_and_report(
    trained: dict, model_path: Path
) -> None:
    model = load_model(model_path)
    assert model.tiers is not None
    card = trained["tiers"]
    assert card["warm"] == model.tiers.warm and card["hot"] == model.tiers.hot
    assert 0.0 < card["warm"] < card["hot"] < 1.0
    window = trained["training_data"]["window"]
    assert f"{window['test_from']}..{window['test_to']}" in card["chosen_on"]
    on_disk = json.loads(model_path.with_name("model_card.json").read_text())
    assert on_disk["tiers"] == card
    weeks = card["test_weeks"]
    assert (
        sum(row["sessions"] for row in weeks.values())
        == (trained["metrics"]["session_start"]["test_sessions"])
    )
    assert sum(row["capture"] for row in weeks.values()) == pytest.approx(1.0)
    # The model ranks: Hot converts more than Warm, Warm more than Cold (and, on the
    # generated data, the truth agrees).
    rates = [weeks[t]["conversion_rate"] for t in ("hot", "warm", "cold")]
    assert rates[0] > rates[2] and rates[1] > rates[2] and weeks["hot"]["lift"] > 1.5
    truths = [weeks[t]["mean_true_probability"] for t in ("hot", "warm", "cold")]
    assert truths[0] > truths[1] > truths[2]
    report = Path(trained["model_dir"]) / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["tiers"] == card
    text = (report / "report.md").read_text()
    assert "## Tiers" in text
    assert f"| hot | ≥ {card['hot']:.4f} |" in text
    assert f"| {weeks['cold']['capture']:.4f} |" in text


def test_one_and_five_percent_of_the_test_weeks_land_hot_and_warm_or_hot(
    trained: dict, model_path: Path, data_dir: Path
) -> None:
    model = load_model(model_path)
    ds = load_dataset(data_dir)
    days = pd.to_datetime(ds.sessions["visit_date"])
    last = (days >= trained["training_data"]["window"]["test_from"]).to_numpy()
    # The features training chose on: every session's encodings out of fold (the same
    # seed and folds as the fixture's run, so the same numbers).
    every = np.arange(len(ds.sessions))
    x_all, _ = session_features(ds, every, every[:0], TrainConfig())
    codes = model.tier_codes(model.score_session_vectors(x_all[last]))
    n = int(last.sum())
    assert np.mean(codes == HOT) == pytest.approx(0.01, abs=1.5 / n)
    assert np.mean(codes == WARM) == pytest.approx(0.04, abs=2.5 / n)
    # Scored as the worker scores them, from the raw rows with the encodings fitted on
    # every session (their own outcomes included), the shares move a little: loosely.
    live = model.tier_codes(model.predict_proba(ds.sessions[last])[:, 1])
    assert np.mean(live == HOT) == pytest.approx(0.01, abs=0.006)
    assert np.mean(live >= WARM) == pytest.approx(0.05, abs=0.02)
    assert np.mean(live == COLD) > 0.93
    # An online shift moves the probabilities, not who is Hot.
    shifted = model.with_online_shift(-0.7, "test")
    p_shifted = shifted.predict_proba(ds.sessions[last])[:, 1]
    assert p_shifted.mean() < 0.6 * model.predict_proba(ds.sessions[last])[:, 1].mean()
    np.testing.assert_array_equal(shifted.tier_codes(p_shifted), live)


def test_one_probability_gets_the_tier_its_array_gets() -> None:
    # ``Tiers.of`` (plain floats, for one row) and ``Tiers.codes`` (NumPy, for a batch)
    # write the same rule twice: they agree on every value, the edges included.
    tiers = Tiers(warm=0.05, hot=0.1)
    rng = np.random.default_rng(5)
    edges = [0.0, 1.0, np.nan, 1e-300, 1 - 1e-16, 0.05, 0.1, np.nextafter(0.05, 0), 0.0999999]
    p = np.concatenate([rng.uniform(0, 0.2, 2000), edges])
    for shift in (0.0, -0.7, 1.3):
        by_array = [("cold", "warm", "hot")[c] for c in tiers.codes(p, shift)]
        assert [tiers.of(float(x), shift) for x in p] == by_array
