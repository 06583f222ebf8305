"""Fixtures shared by every test package: a small generated data set and its model."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest

SMALL_SESSIONS = 20_000


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generate a small data set once per test run."""
    from training.generate import generate

    out = tmp_path_factory.mktemp("data")
    generate(out, SMALL_SESSIONS, seed=7, progress=False)
    return out


@pytest.fixture(scope="session")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train a model on the small data set once per test run; returns its card."""
    from training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("model")
    card = train(data_dir, out, TrainConfig(max_rounds=150, threads=1, tune_max_trials=2))
    card["model_dir"] = str(out)
    return card


@pytest.fixture(scope="session")
def model_path(trained: dict) -> Path:
    """Return the path of the trained Pickled_model.pkl."""
    return Path(trained["model_dir"]) / "Pickled_model.pkl"


class _Payload:
    """What a hostile pickle does when it is loaded: here, it touches a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[Path], None], tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.fixture()
def hostile_pickle() -> Callable[[Path], bytes]:
    """Return a maker of pickles that touch a marker file when unpickled."""
    return lambda marker: pickle.dumps(_Payload(marker))


@pytest.fixture()
def plant(hostile_pickle: Callable[[Path], bytes]) -> Callable[[Path, Path], str]:
    """Return a function that replaces an artifact with a hostile pickle and a card that
    matches it, as whoever can write the model folder could; it returns the digest."""

    def plant(model_path: Path, marker: Path) -> str:
        data = hostile_pickle(marker)
        model_path.write_bytes(data)
        card_file = model_path.with_name("model_card.json")
        card = json.loads(card_file.read_text())
        card["artifact_sha256"] = hashlib.sha256(data).hexdigest()
        card_file.write_text(json.dumps(card))
        return str(card["artifact_sha256"])

    return plant


@pytest.fixture()
def artifact_copy(model_path: Path, tmp_path: Path) -> Path:
    """Return a copy of the trained artifact and its card in a folder of the test's own."""
    folder = tmp_path / "deployed"
    folder.mkdir()
    for name in ("Pickled_model.pkl", "model_card.json"):
        (folder / name).write_bytes(model_path.with_name(name).read_bytes())
    return folder / "Pickled_model.pkl"
