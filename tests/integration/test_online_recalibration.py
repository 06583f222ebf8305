"""Online recalibration end to end: a model trained before a drop in conversion, the
months after it replayed through the real stack, and the dashboard's expected
conversions brought back to the observed ones, with only the deployment's processes
(the worker, ``python -m stream quality`` and the API) and no manual step."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from helpers import Truth

from artifact import load_model
from bench.procs import ROOT, WorkerProcess, free_port, metrics, serve, settings_env, stop
from contracts import topics
from stream.calibration_topic import read_all
from stream.replay import send_events
from stream.settings import StreamSettings
from stream.tail import read_topic
from training.generate import generate
from training.holdout import split_days
from training.train import TrainConfig, train

pytestmark = pytest.mark.integration

SESSIONS = 100_000
DAYS, AFTER = 227, 61  # the generated days; November and December (their rate drops)


def _epoch_ms(text: str) -> float:
    return datetime.fromisoformat(text).timestamp() * 1000.0


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def test_expected_conversions_follow_a_drop_that_came_after_the_model(
    stream_settings: StreamSettings, tmp_path: Path
) -> None:
    generate(tmp_path / "all", SESSIONS, seed=31, progress=False)
    split = split_days(tmp_path / "all", tmp_path, (AFTER + 0.5) / DAYS)
    assert split["holdout_from"] == "2021-11-01"
    train(
        tmp_path / "train",
        tmp_path / "model",
        TrainConfig(max_rounds=150, threads=1, tune_max_trials=1, compare=False),
    )
    model_path = tmp_path / "model" / "Pickled_model.pkl"
    model = load_model(model_path)
    settings = stream_settings.model_copy(
        update={
            "model_path": model_path,
            "quality_metrics_port": free_port(),
            "recal_window": 15_000,
            "recal_min_outcomes": 2000,
            "recal_min_conversions": 40,
            "recal_every": 500,
            "recal_max_step": 0.15,
        }
    )
    truth = Truth(tmp_path / "holdout")
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    env = settings_env(settings)
    quality = subprocess.Popen(
        [sys.executable, "-m", "stream", "quality"],
        cwd=ROOT,
        env=env,
        stdout=(tmp_path / "quality.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    port = free_port()
    api = serve(
        [sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)],
        env | {"SCORER_API_INSECURE_DEMO": "1", "SCORER_API_OPERATOR_PORT": "0"},
        port,
        tmp_path / "api.log",
        timeout_s=60,
    )
    url = f"http://127.0.0.1:{port}"
    worker.start()
    try:
        worker.wait_ready()
        time.sleep(2)  # the quality reader starts from the topics' ends
        asyncio.run(send_events(settings, truth.events, progress=False))
        # Every session counted, and every conversion: the hits trail the sessions.
        converted = sum(truth.converted(s) for s in truth.sessions)
        data: dict = {}
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            data = httpx.get(f"{url}/dashboard/data", params={"window": "all"}).json()
            totals = data["totals"]
            if totals["sessions"] >= len(truth.sessions) and totals["observed"] >= converted:
                break
            time.sleep(2)
        assert data["totals"]["sessions"] == len(truth.sessions)
        assert data["totals"]["observed"] == converted
        samples = metrics(settings.quality_metrics_port)
        row = dict(truth.sessions[next(iter(truth.sessions))])
        served = httpx.post(f"{url}/predict", json=row).json()
    finally:
        worker.stop()
        quality.terminate()
        quality.wait(timeout=20)
        stop(api)

    version = model.version
    shift = samples[f"scorer_calibration_shift{{model_version={version}}}"]
    assert shift < -0.3, shift  # the drop, in log-odds: about log(0.57)

    # The dashboard's last 30 days: observed against expected, as the page shows them.
    chart = data["chart"]
    first_day_ms = chart[0]["start_ms"]
    expected = sum(day["expected"] for day in chart)
    observed = sum(day["observed"] for day in chart)
    assert 0.9 <= observed / expected <= 1.1, (observed, expected)

    # The same sessions' scores without the online shift: the model as shipped.
    scores = asyncio.run(
        read_topic(
            settings.kafka_bootstrap,
            topics.topic_name(topics.SCORES, settings.topic_prefix),
            until=len(truth.sessions),
            timeout_s=120,
            counts=lambda e: e.get("trigger") == "session_start",
        )
    )
    starts = {e["session_id"]: e for e in scores if e["trigger"] == "session_start"}
    assert set(starts) == set(truth.sessions)
    late = [s for s, e in starts.items() if _epoch_ms(e["event_time"]) >= first_day_ms]
    shipped = sum(
        1 / (1 + math.exp(-(_logit(starts[s]["probability"]) - starts[s]["calibration_shift"])))
        for s in late
    )
    late_observed = sum(truth.converted(s) for s in late)
    assert late_observed == observed
    print(
        f"last 30 days: {len(late)} sessions, {observed} conversions; observed / expected "
        f"{observed / expected:.3f} (shipped model: {observed / shipped:.3f}); shift {shift:+.3f}"
    )
    assert 0.45 <= late_observed / shipped <= 0.7, late_observed / shipped

    # Every score names the calibration that made it; only the level moved: each
    # score without its shift is the shipped model's own probability for the row.
    ids = {e["calibration_id"] for e in scores}
    assert "offline" in ids and any(i.startswith(f"{version}#") for i in ids)
    sample = list(starts)[:: max(1, len(starts) // 300)]
    offline = model.score_rows([truth.sessions[s] for s in sample])
    for sid, p in zip(sample, offline, strict=True):
        e = starts[sid]
        assert _logit(e["probability"]) - e["calibration_shift"] == pytest.approx(
            _logit(float(p)), abs=2e-3
        )
    # The API serves the row with a calibration of the stream's, and exactly its shift
    # (the last one may reach the API a second after the quality process made it).
    records = {r.calibration_id: r for r in asyncio.run(read_all(settings)).history}
    assert served["calibration_id"] in records
    assert _logit(served["probability"]) == pytest.approx(
        _logit(float(model.score_rows([row])[0])) + records[served["calibration_id"]].shift,
        abs=2e-3,
    )
