"""Fixtures shared by every test package: a small generated data set and its model."""

from __future__ import annotations

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
