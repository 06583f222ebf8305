"""The API's /predict equals the stream's session-start score for the same row: the
probability, the tier and the reasons."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import ApiSettings
from contracts import topics
from stream.replay import build_events, send_events
from stream.settings import StreamSettings
from stream.tail import is_event_score, read_topic
from training.generate import generate

pytestmark = pytest.mark.integration

QUIRKS = [
    {"device_screen_resolution": "0x0"},
    {"device_screen_resolution": "(not set)", "geo_city": "(not set)"},
    {"utm_source": None, "utm_campaign": None, "utm_keyword": None, "device_brand": None},
    {"utm_medium": "a-medium-never-seen", "geo_city": "Atlantis", "device_browser": "Netscape"},
    {"visit_number": 563, "client_id": None},
]


def test_predict_equals_the_streams_session_start_score(
    worker, stream_settings: StreamSettings, tmp_path: Path, model_path: Path
) -> None:
    generate(tmp_path / "data", 200, seed=23, progress=False)
    rows = [orjson.loads(v) for t, _, v in build_events(tmp_path / "data") if t == topics.SESSIONS]
    for row, quirk in zip(rows, QUIRKS, strict=False):
        row.update(quirk)
    events = [(topics.SESSIONS, r["session_id"].encode(), orjson.dumps(r)) for r in rows]
    asyncio.run(send_events(stream_settings, events, progress=False))
    scores = asyncio.run(
        read_topic(
            stream_settings.kafka_bootstrap,
            topics.topic_name(topics.SCORES, stream_settings.topic_prefix),
            until=len(rows),
            timeout_s=120,
            counts=is_event_score,
        )
    )
    scores = [e for e in scores if is_event_score(e)]
    stream_p = {e["session_id"]: e["probability"] for e in scores}
    assert set(stream_p) == {r["session_id"] for r in rows}

    app = create_app(
        ApiSettings(
            redis_url=stream_settings.redis_url,
            model_path=model_path,
            redis_key_prefix=stream_settings.redis_key_prefix,
            api_insecure_demo=True,  # in-process, no keys: the answers are what is tested
        )
    )
    with TestClient(app) as client:
        batch = client.post("/predict/batch", json={"rows": rows})
        assert batch.status_code == 200, batch.text
        api_p = {p["session_id"]: p["probability"] for p in batch.json()["predictions"]}
        for row in rows[: len(QUIRKS) + 20]:
            single = client.post("/predict", json=row)
            assert single.status_code == 200, single.text
            assert single.json()["probability"] == pytest.approx(api_p[row["session_id"]], abs=1e-9)
        versions = {e["model_version"] for e in scores}
        assert versions == {client.get("/health").json()["model_version"]}
        # The reasons: the same for the same row, from the stream's event (Warm and Hot
        # scores) and from the API; and for a Cold score, made by the API from what the
        # worker stored, the same as for its row.
        explained = client.post("/predict/batch?explain=true", json={"rows": rows})
        assert explained.status_code == 200, explained.text
        api = {p["session_id"]: p for p in explained.json()["predictions"]}
        cold = [e["session_id"] for e in scores if e["tier"] == "cold"][:5]
        stored = {
            sid: client.get(f"/sessions/{sid}/score", params={"explain": "true"}).json()
            for sid in cold
        }
    for sid, p in stream_p.items():
        assert api_p[sid] == pytest.approx(p, abs=1e-9), sid
    warm = 0
    for e in scores:
        mine = api[e["session_id"]]
        assert mine["tier"] == e["tier"], e["session_id"]
        if e["tier"] != "cold":
            warm += 1
            assert mine["reasons"] == e["reasons"], e["session_id"]
    assert warm >= 3 and len(stored) == 5
    for sid, answer in stored.items():
        assert answer["reasons"] == api[sid]["reasons"], sid
