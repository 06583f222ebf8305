import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from artifact import (
    ArtifactError,
    FeatureMismatchError,
    PinnedDigestError,
    load_model,
    read_card,
)
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


def test_the_card_alone_does_not_stop_whoever_writes_the_folder(
    model_copy: Path, tmp_path: Path, plant
) -> None:
    # The threat the pin is for: a pickle and a card written together pass the card check.
    marker = tmp_path / "ran"
    plant(model_copy, marker)
    with pytest.raises(ArtifactError, match="not a ConversionModel"):
        load_model(model_copy)
    assert marker.exists()


def test_a_pinned_digest_refuses_a_planted_artifact_before_unpickling(
    model_copy: Path, tmp_path: Path, plant
) -> None:
    genuine = read_card(model_copy)["artifact_sha256"]
    assert (
        load_model(model_copy, expected_sha256=genuine).version == read_card(model_copy)["version"]
    )
    marker = tmp_path / "ran"
    planted = plant(model_copy, marker)
    with pytest.raises(PinnedDigestError, match="pinned digest"):
        load_model(model_copy, expected_sha256=genuine)
    assert not marker.exists()
    assert planted != genuine


def test_the_pin_is_read_as_hex_in_any_case_and_must_be_a_digest_or_empty(model_copy: Path) -> None:
    genuine = read_card(model_copy)["artifact_sha256"]
    assert load_model(model_copy, expected_sha256=f" {genuine.upper()} ").version
    for bad in ("abc", genuine[:-1] + "g", genuine + "0"):
        with pytest.raises(ArtifactError, match="not 64 hex digits"):
            load_model(model_copy, expected_sha256=bad)
    for unset in ("", "  "):  # an empty variable is no pin
        assert load_model(model_copy, expected_sha256=unset).version


def test_the_bytes_hashed_are_the_bytes_unpickled(
    model_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hostile_pickle
) -> None:
    # Every read of the file after the first one sees a planted pickle: a loader that
    # hashed one read and unpickled another would run it.
    marker = tmp_path / "ran"
    planted = hostile_pickle(marker)
    genuine = read_card(model_copy)["artifact_sha256"]
    original = model_copy.read_bytes()
    reads = []
    read_bytes, open_ = Path.read_bytes, Path.open

    def swapped_read_bytes(self: Path) -> bytes:
        if self == model_copy:
            reads.append("read_bytes")
            return original if len(reads) == 1 else planted
        return read_bytes(self)

    def swapped_open(self: Path, mode: str = "r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if self == model_copy and "b" in mode:
            reads.append("open")
            if len(reads) > 1:
                (tmp_path / "planted.pkl").write_bytes(planted)
                return open_(tmp_path / "planted.pkl", mode, *args, **kwargs)
        return open_(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", swapped_read_bytes)
    monkeypatch.setattr(Path, "open", swapped_open)
    model = load_model(model_copy, expected_sha256=genuine)
    assert model.version == read_card(model_copy)["version"]
    assert len(reads) == 1 and not marker.exists()
