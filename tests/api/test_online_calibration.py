"""The API serves its model with the online calibration the worker copied into Redis."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import orjson
import pytest
from fakes import FakeRedis
from fastapi.testclient import TestClient

from api.calibration import apply_calibration
from api.main import create_app
from api.settings import ApiSettings
from artifact import load_model
from contracts import keys
from stream.recalibration import make_record

ROW = {
    "session_id": "1.1637753200.1637753200",
    "client_id": "1.1637753200",
    "visit_date": "2021-11-24",
    "visit_time": "14:26:40",
    "visit_number": 1,
    "utm_source": "ZpYIoDJMcFzVoPFsHGJL",
    "utm_medium": "banner",
    "device_category": "mobile",
    "geo_country": "Russia",
    "geo_city": "Moscow",
}


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_a_record_in_redis_moves_predict_by_its_shift_and_names_it(
    model_path: Path, fake_redis: FakeRedis
) -> None:
    version = load_model(model_path).version
    app = create_app(
        ApiSettings(model_path=model_path, api_insecure_demo=True, calibration_follow_s=0.05),
        redis=fake_redis,
    )
    with TestClient(app) as client:
        before = client.post("/predict", json=ROW).json()
        assert before["calibration_id"] == "offline"
        assert client.get("/model").json()["online_calibration"] == {"id": "offline", "shift": 0}
        record = make_record(version, 3, -0.4, "active", "estimate")
        fake_redis.hashes[keys.calibrations_key("scorer")] = {
            version.encode(): orjson.dumps(record.model_dump()),
            b"another-version": orjson.dumps(
                make_record("another-version", 1, 1.0, "active", "estimate").model_dump()
            ),
        }
        for _ in range(100):
            after = client.post("/predict", json=ROW).json()
            if after["calibration_id"] != "offline":
                break
            asyncio.run(asyncio.sleep(0.02))
        assert after["calibration_id"] == f"{version}#3"
        assert _logit(after["probability"]) - _logit(before["probability"]) == pytest.approx(
            -0.4, abs=1e-4
        )
        card = client.get("/model").json()
        assert card["online_calibration"] == {"id": f"{version}#3", "shift": -0.4}
        assert card["version"] == version
        batch = client.post("/predict/batch", json={"rows": [ROW]}).json()
        assert batch["calibration_id"] == f"{version}#3"
        assert batch["predictions"][0]["probability"] == after["probability"]
        # Redis forgets the copy: the API keeps the calibration it serves.
        fake_redis.hashes.clear()
        asyncio.run(asyncio.sleep(0.2))
        assert client.post("/predict", json=ROW).json()["calibration_id"] == f"{version}#3"


def test_a_broken_record_in_redis_changes_nothing(model_path: Path, fake_redis: FakeRedis) -> None:
    app = create_app(
        ApiSettings(model_path=model_path, api_insecure_demo=True, calibration_follow_s=0),
        redis=fake_redis,
    )
    with TestClient(app):
        model = app.state.model
        key = keys.calibrations_key("scorer")
        for raw in (b"{no json", orjson.dumps({"model_version": model.version, "shift": 9.0})):
            fake_redis.hashes[key] = {model.version.encode(): raw}
            assert asyncio.run(apply_calibration(app)) is False
        assert app.state.model is model
