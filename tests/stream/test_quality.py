"""Online quality: pairing scores with outcomes, the window, AUC and deciles."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from stream.quality import QualityCollector, QualityTracker, deciles, roc_auc


def _score(sid: str, p: float, version: str = "v1", trigger: str = "session_start") -> dict:
    return {"session_id": sid, "probability": p, "model_version": version, "trigger": trigger}


def _outcome(sid: str, outcome: str) -> dict:
    return {"session_id": sid, "outcome": outcome}


def test_rank_auc_equals_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    p = np.round(rng.random(2000), 2)  # many ties
    y = rng.random(2000) < p
    assert roc_auc(p, y) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert roc_auc(p, np.zeros(2000, dtype=bool)) is None


def test_pairs_form_in_either_order_and_only_from_start_scores() -> None:
    t = QualityTracker()
    t.on_score(_score("a", 0.9))
    t.on_score(_score("a", 0.1, trigger="hit"))  # not a start score: ignored
    t.on_outcome(_outcome("a", "converted"), now=100.0)
    t.on_outcome(_outcome("b", "not_converted"), now=100.0)  # outcome before its score
    t.on_score(_score("b", 0.2))
    p, y = t.window(now=101.0)["v1"]
    assert sorted(zip(p.tolist(), y.tolist(), strict=True)) == [(0.2, False), (0.9, True)]


def test_a_late_conversion_supersedes_an_inactivity_close() -> None:
    t = QualityTracker()
    t.on_score(_score("a", 0.4))
    t.on_outcome(_outcome("a", "not_converted"), now=10.0)
    t.on_outcome(_outcome("a", "converted"), now=11.0)
    t.on_outcome(_outcome("a", "not_converted"), now=12.0)  # a redelivered copy
    _, y = t.window(now=12.0)["v1"]
    assert y.tolist() == [True]


def test_the_window_rolls_and_versions_are_apart() -> None:
    t = QualityTracker(window_s=60)
    t.on_score(_score("old", 0.5, "v1"))
    t.on_outcome(_outcome("old", "converted"), now=0.0)
    t.on_score(_score("new", 0.5, "v2"))
    t.on_outcome(_outcome("new", "not_converted"), now=100.0)
    w = t.window(now=120.0)
    assert set(w) == {"v2"}


def test_deciles_and_the_collector() -> None:
    rng = np.random.default_rng(1)
    t = QualityTracker()
    for k in range(1000):
        p = float(rng.random() * 0.2)
        t.on_score(_score(f"s{k}", p))
        t.on_outcome(_outcome(f"s{k}", "converted" if rng.random() < p else "not_converted"))
    p, y = t.window()["v1"]
    groups = deciles(p, y)
    assert len(groups) == 10
    assert [g[0] for g in groups] == sorted(g[0] for g in groups)
    families = {f.name: f for f in QualityCollector(t).collect()}
    auc = families["scorer_quality_roc_auc"].samples[0]
    assert auc.labels == {"model_version": "v1"}
    assert auc.value == pytest.approx(roc_auc_score(y, p))
    assert len(families["scorer_quality_predicted"].samples) == 10
    buckets = [s for s in families["scorer_quality_scores"].samples if s.name.endswith("_bucket")]
    assert buckets[-1].value == 1000
