"""The API refuses an artifact whose SHA-256 is not the pinned one, at start and on reload."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from access_keys import SCORING, SCORING_KEY
from fakes import FakeRedis
from fastapi.testclient import TestClient

from api.main import create_app
from api.operator import create_operator_app
from api.schemas import EXAMPLE_ROW
from api.settings import ApiSettings
from artifact import PinnedDigestError, load_model, read_card, save_model


def test_the_api_does_not_start_on_an_artifact_that_is_not_the_pinned_one(
    artifact_copy: Path, tmp_path: Path, plant: Callable[[Path, Path], str]
) -> None:
    genuine = read_card(artifact_copy)["artifact_sha256"]
    marker = tmp_path / "ran"
    plant(artifact_copy, marker)
    settings = ApiSettings(model_path=artifact_copy, model_sha256=genuine, api_key=SCORING_KEY)
    with (
        pytest.raises(PinnedDigestError, match="pinned digest"),
        TestClient(create_app(settings, redis=FakeRedis())),
    ):
        pass
    assert not marker.exists()


def test_a_hot_reload_refuses_what_is_not_pinned_and_keeps_serving(
    artifact_copy: Path, model_path: Path, tmp_path: Path, plant: Callable[[Path, Path], str]
) -> None:
    deployed = artifact_copy.parent
    genuine = read_card(artifact_copy)
    settings = ApiSettings(
        model_path=artifact_copy,
        model_sha256=genuine["artifact_sha256"],
        api_key=SCORING_KEY,
        model_reload_s=0.05,
    )
    app = create_app(settings, redis=FakeRedis())
    operator = TestClient(create_operator_app(app))

    def reloads(result: str, count: int) -> bool:
        line = f'scorer_api_model_reloads_total{{result="{result}"}} {count:.1f}'
        for _ in range(100):
            if line in operator.get("/metrics").text:
                return True
            time.sleep(0.05)
        return False

    with TestClient(app) as c:
        assert c.get("/health").json()["model_version"] == genuine["version"]
        # Whoever can write the model folder plants a pickle with a card that matches it.
        marker = tmp_path / "ran"
        plant(artifact_copy, marker)
        assert reloads("digest_mismatch", 1)
        assert not marker.exists()
        r = c.post("/predict", json=EXAMPLE_ROW, headers=SCORING)
        assert r.status_code == 200 and r.json()["model_version"] == genuine["version"]

        # A genuine new release is refused too, until its digest is pinned (and the API
        # restarted with the new pin).
        nxt = load_model(model_path)
        nxt.version = "retrained-v2"
        card = {k: v for k, v in genuine.items() if k != "artifact_sha256"}
        save_model(nxt, deployed, card)
        assert reloads("digest_mismatch", 2)
        assert c.get("/health").json()["model_version"] == genuine["version"]
