"""Online quality on the real stack: the AUC it serves equals the offline AUC."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import Truth
from sklearn.metrics import roc_auc_score

from artifact import load_model
from bench.procs import ROOT, WorkerProcess, free_port, metrics, settings_env
from stream.replay import send_events
from stream.settings import StreamSettings
from training.generate import generate

pytestmark = pytest.mark.integration


def test_online_auc_matches_the_offline_auc_of_the_same_sessions(
    stream_settings: StreamSettings, model_path: Path, tmp_path: Path
) -> None:
    generate(tmp_path / "data", 2500, seed=23, progress=False)
    truth = Truth(tmp_path / "data")
    settings = stream_settings.model_copy(
        update={"session_gap_s": 2.0, "close_check_s": 0.5, "quality_metrics_port": free_port()}
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    quality = subprocess.Popen(
        [sys.executable, "-m", "stream", "quality"],
        cwd=ROOT,
        env=settings_env(settings),
        stdout=(tmp_path / "quality.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    worker.start()
    samples: dict[str, float] = {}
    try:
        worker.wait_ready()
        time.sleep(2)  # the quality reader starts from the topics' ends
        asyncio.run(send_events(settings, truth.events, progress=False))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                samples = metrics(settings.quality_metrics_port)
            except OSError:
                samples = {}
            pairs = sum(v for k, v in samples.items() if k.startswith("scorer_quality_pairs{"))
            if pairs >= len(truth.sessions):
                break
            time.sleep(1)
    finally:
        worker.stop()
        quality.terminate()
        quality.wait(timeout=20)
    model = load_model(model_path)
    pairs = {k: v for k, v in samples.items() if k.startswith("scorer_quality_pairs{")}
    assert pairs == {f"scorer_quality_pairs{{model_version={model.version}}}": len(truth.sessions)}
    online = samples[f"scorer_quality_roc_auc{{model_version={model.version}}}"]
    sids = list(truth.sessions)
    offline_p = model.score_rows([truth.sessions[s] for s in sids])
    labels = np.array([truth.converted(s) for s in sids])
    offline = roc_auc_score(labels, offline_p)
    assert abs(online - offline) <= 0.01, (online, offline)
    observed = [v for k, v in samples.items() if k.startswith("scorer_quality_observed{")]
    assert len(observed) == 10
    assert sum(observed) / 10 == pytest.approx(labels.mean(), abs=0.01)
