"""The worker refuses an artifact whose SHA-256 is not the pinned one, at start and on reload."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import generate_latest

from artifact import load_model, read_card, save_model
from stream.metrics import WorkerMetrics
from stream.reloads import ModelReloads
from stream.settings import StreamSettings
from stream.worker import EXIT_MODEL_REFUSED

ROOT = Path(__file__).resolve().parents[2]


def test_the_worker_does_not_start_on_an_artifact_that_is_not_the_pinned_one(
    artifact_copy: Path, tmp_path: Path, plant: Callable[[Path, Path], str]
) -> None:
    genuine = read_card(artifact_copy)["artifact_sha256"]
    marker = tmp_path / "ran"
    plant(artifact_copy, marker)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")} | {
        "SCORER_MODEL_PATH": str(artifact_copy),
        "SCORER_MODEL_SHA256": genuine,
        # Nothing listens there: the worker must stop before it would connect anywhere.
        "SCORER_KAFKA_BOOTSTRAP": "127.0.0.1:9",
        "SCORER_REDIS_URL": "redis://127.0.0.1:9/0",
        "SCORER_METRICS_PORT": "0",
        "SCORER_DATA_DIR": str(tmp_path / "faust"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "stream", "worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EXIT_MODEL_REFUSED, done.stderr[-2000:]
    assert "pinned digest" in done.stderr and genuine in done.stderr
    assert not marker.exists()


def _pipeline(settings: StreamSettings, model: object) -> ModelReloads:
    processor = SimpleNamespace(model=model)
    return ModelReloads(settings, processor, WorkerMetrics())  # type: ignore[arg-type]


def _reloads(pipe: ModelReloads) -> str:
    text = generate_latest(pipe.metrics.registry).decode()
    return "\n".join(
        line for line in text.splitlines() if line.startswith("scorer_worker_model_reloads_total")
    )


def test_a_hot_reload_takes_only_the_pinned_artifact(
    artifact_copy: Path, tmp_path: Path, plant: Callable[[Path, Path], str]
) -> None:
    deployed = artifact_copy.parent
    current = load_model(artifact_copy)
    # The next release, whose digest the operator pins before deploying it.
    release = tmp_path / "release"
    nxt = load_model(artifact_copy)
    nxt.version = "retrained-v2"
    card = {k: v for k, v in read_card(artifact_copy).items() if k != "artifact_sha256"}
    pinned = save_model(nxt, release, card)["artifact_sha256"]
    settings = StreamSettings(model_path=artifact_copy, model_sha256=pinned)
    pipe = _pipeline(settings, current)

    # Whoever can write the model folder plants a pickle with a card that matches it.
    marker = tmp_path / "ran"
    plant(artifact_copy, marker)
    assert asyncio.run(pipe.reload_model()) is False
    assert pipe.processor.model is current and not marker.exists()
    assert 'scorer_worker_model_reloads_total{result="digest_mismatch"} 1.0' in _reloads(pipe)

    # The pinned release is taken.
    for name in ("model_card.json", "Pickled_model.pkl"):
        (deployed / name).write_bytes((release / name).read_bytes())
    assert asyncio.run(pipe.reload_model()) is True
    assert pipe.processor.model.version == "retrained-v2"
    assert 'scorer_worker_model_reloads_total{result="loaded"} 1.0' in _reloads(pipe)
