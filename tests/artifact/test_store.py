import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from artifact import ArtifactError, FeatureMismatchError, load_model, read_card
from features import IN_SESSION_FEATURES, SESSION_FEATURES
from features.hits import empty_state


@pytest.fixture()
def model_copy(model_path: Path, tmp_path: Path) -> Path:
    for name in ("Pickled_model.pkl", "model_card.json"):
        shutil.copy(model_path.with_name(name), tmp_path / name)
    return tmp_path / "Pickled_model.pkl"


def test_card_describes_the_model(model_path: Path) -> None:
    card = read_card(model_path)
    model = load_model(model_path)
    assert card["version"] == model.version
    assert card["session_features"] == list(SESSION_FEATURES)
    assert card["in_session_features"] == list(IN_SESSION_FEATURES)
    assert len(card["artifact_sha256"]) == 64
    assert (
        card["training_data"]["window"]["test_from"] > card["training_data"]["window"]["train_from"]
    )


def test_unpickled_model_scores_raw_csv_rows(model_path: Path, data_dir: Path) -> None:
    model = load_model(model_path)
    df = pd.read_csv(data_dir / "ga_sessions.csv", dtype=str).head(50)
    proba = model.predict_proba(df)
    assert proba.shape == (50, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert ((proba >= 0) & (proba <= 1)).all()
    rows = df.where(df.notna(), None).to_dict("records")
    np.testing.assert_allclose(proba[:, 1], model.score_rows(rows), rtol=1e-6)


def test_in_session_score_without_hits_is_a_probability(model_path: Path, data_dir: Path):
    model = load_model(model_path)
    df = pd.read_csv(data_dir / "ga_sessions.csv", dtype=str).head(3)
    x = model.session_vectors({c: df[c].tolist() for c in df})
    p = model.score_in_session(x, np.vstack([empty_state()] * 3))
    assert p.shape == (3,)
    assert ((p > 0) & (p < 1)).all()


def test_a_tampered_pickle_is_refused_before_unpickling(model_copy: Path) -> None:
    with model_copy.open("ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ArtifactError, match="refusing to unpickle"):
        load_model(model_copy)


def test_a_missing_card_is_refused(model_copy: Path) -> None:
    model_copy.with_name("model_card.json").unlink()
    with pytest.raises(ArtifactError, match="no model card"):
        load_model(model_copy)


def test_a_missing_model_names_the_command_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="python -m training train"):
        load_model(tmp_path / "Pickled_model.pkl")


def test_a_model_trained_on_other_features_fails_loudly(model_path: Path) -> None:
    model = load_model(model_path)
    model.session_features = model.session_features[:-1]
    with pytest.raises(FeatureMismatchError, match="trained on session features"):
        model.check_features()


def test_card_is_json_with_metrics(model_path: Path) -> None:
    card = json.loads(model_path.with_name("model_card.json").read_text())
    assert 0.5 < card["metrics"]["session_start"]["test_roc_auc"] <= 1.0
    assert card["metrics"]["in_session"]["by_hits_seen"]
