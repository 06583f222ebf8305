import json
from datetime import UTC, datetime

import pytest

from api.schemas import EXAMPLE_ROW
from artifact import load_model
from contracts import keys


def test_predict_scores_through_the_shared_feature_code(client, model_path) -> None:
    r = client.post("/predict", json=EXAMPLE_ROW)
    assert r.status_code == 200
    body = r.json()
    model = load_model(model_path)
    assert body["session_id"] == EXAMPLE_ROW["session_id"]
    assert body["model_version"] == model.version
    assert body["probability"] == pytest.approx(model.score_rows([EXAMPLE_ROW])[0], abs=1e-6)


def test_batch_equals_rows_one_by_one(client) -> None:
    rows = [
        dict(EXAMPLE_ROW, session_id=f"s{i}", visit_number=i + 1, geo_city=c)
        for i, c in enumerate(["Moscow", "Kazan", "(not set)", "Nowhere"])
    ]
    batch = client.post("/predict/batch", json={"rows": rows}).json()
    single = [client.post("/predict", json=r).json()["probability"] for r in rows]
    assert [p["probability"] for p in batch["predictions"]] == pytest.approx(single, abs=1e-6)
    assert [p["session_id"] for p in batch["predictions"]] == [r["session_id"] for r in rows]


@pytest.mark.parametrize(
    "quirk",
    [
        {"device_screen_resolution": "0x0"},
        {"device_screen_resolution": "(not set)"},
        {"device_screen_resolution": None},
        {"utm_source": None, "utm_campaign": None, "device_os": None, "device_brand": None},
        {"utm_medium": "never-seen-medium", "geo_city": "Atlantis"},
        {"geo_city": "(not set)", "device_os": "(not set)"},
    ],
)
def test_real_quirks_are_accepted(client, quirk) -> None:
    r = client.post("/predict", json=dict(EXAMPLE_ROW, **quirk))
    assert r.status_code == 200, r.text
    assert 0 < r.json()["probability"] < 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"visit_number": "many"}, "visit_number"),
        ({"visit_number": 0}, "visit_number"),
        ({"visit_date": "24.11.2021"}, "visit_date"),
        ({"visit_date": "2021-02-30"}, "visit_date"),
        ({"visit_time": "25:00:00"}, "visit_time"),
        ({"device_screen_resolution": "abc"}, "device_screen_resolution"),
        ({"utm_medium": 5}, "utm_medium"),
        ({"unexpected_field": "x"}, "unexpected_field"),
    ],
)
def test_invalid_rows_get_a_422_naming_the_field(client, change, field) -> None:
    r = client.post("/predict", json=dict(EXAMPLE_ROW, **change))
    assert r.status_code == 422
    assert field in json.dumps(r.json()["detail"])


def test_a_missing_session_id_is_named(client) -> None:
    row = {k: v for k, v in EXAMPLE_ROW.items() if k != "session_id"}
    r = client.post("/predict", json=row)
    assert r.status_code == 422
    assert "session_id" in json.dumps(r.json()["detail"])


def test_a_body_that_is_not_json_is_a_422(client) -> None:
    r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_an_oversized_batch_is_refused(client) -> None:
    client.app.state.settings.max_batch_rows = 3
    r = client.post("/predict/batch", json={"rows": [EXAMPLE_ROW] * 4})
    assert r.status_code == 413
    assert "rows" in r.json()["detail"]


def test_latest_score_comes_from_redis(client, fake_redis) -> None:
    event = {
        "score_id": "x",
        "session_id": "abc",
        "client_id": "1.2",
        "probability": 0.12,
        "model_version": "v1",
        "trigger": "hit",
        "hit_number": 3,
        "event_time": "2021-11-24T14:36:32+03:00",
        "scored_at": datetime.now(UTC).isoformat(),
    }
    fake_redis.data[keys.latest_score_key("abc")] = json.dumps(event).encode()
    r = client.get("/sessions/abc/score")
    assert r.status_code == 200
    body = r.json()
    assert body["probability"] == 0.12
    assert body["hit_number"] == 3
    assert 0 <= body["age_s"] < 60


def test_unknown_session_is_a_404(client) -> None:
    r = client.get("/sessions/nope/score")
    assert r.status_code == 404
    assert "nope" in r.json()["detail"]


def test_model_card_and_health_carry_the_version(client, model_path) -> None:
    version = load_model(model_path).version
    assert client.get("/health").json() == {"status": "ok", "model_version": version}
    card = client.get("/model").json()
    assert card["version"] == version
    assert "session_features" in card


def test_api_key_is_required_when_configured(keyed_client) -> None:
    assert keyed_client.post("/predict", json=EXAMPLE_ROW).status_code == 401
    r = keyed_client.post("/predict", json=EXAMPLE_ROW, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401
    r = keyed_client.post("/predict", json=EXAMPLE_ROW, headers={"X-API-Key": "s3cret"})
    assert r.status_code == 200
    assert keyed_client.get("/health").status_code == 200


def test_openapi_shows_a_real_looking_example(client) -> None:
    schema = client.get("/openapi.json").json()
    row = schema["components"]["schemas"]["SessionRow"]
    assert row["examples"][0]["session_id"] == EXAMPLE_ROW["session_id"]
