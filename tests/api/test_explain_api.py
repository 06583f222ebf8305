"""Tiers and reasons in the API's answers: /predict, /predict/batch, a stored score."""

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from fakes import CHANNEL, START, START_MS, FakeRedis, hit_state
from fastapi.testclient import TestClient

from api.main import create_app
from api.reasons import MAX_REASONS, tier_names, tier_of
from api.schemas import EXAMPLE_ROW
from api.settings import ApiSettings
from artifact import ConversionModel
from artifact.explain import EVENT_REASONS
from artifact.tiers import Tiers
from contracts import keys
from contracts.history import history_entry
from contracts.scores import Reasons
from features import SESSION_FEATURES
from features.columns import SESSION_COLUMNS
from features.hits import STATE_NAMES, empty_state
from features.session import rows_to_columns

ROW = EXAMPLE_ROW
# What real exports hold: "(not set)" and empty fields, media never seen in training.
QUIRKS = [
    {},
    {"device_screen_resolution": "(not set)", "geo_city": "(not set)"},
    {"utm_source": None, "utm_medium": None, "utm_campaign": None, "utm_adcontent": None},
    {"utm_medium": "never-seen-medium", "device_brand": None, "device_os": "(not set)"},
    {"visit_number": 7, "device_category": "desktop", "device_screen_resolution": "0x0"},
]


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _adds_up(reasons: dict, probability: float) -> None:
    """bias + top + rest = log_odds = the logit of the (6-decimal) probability."""
    total = reasons["bias"] + sum(r["contribution"] for r in reasons["top"]) + reasons["rest"]
    assert total == pytest.approx(reasons["log_odds"], abs=1e-4)
    # A probability rounded to 6 decimals moves its logit by up to 5e-7 / (p (1 - p)).
    slack = 2e-3 + 1e-6 / (probability * (1.0 - probability))
    assert reasons["log_odds"] == pytest.approx(_logit(probability), abs=slack)
    Reasons.model_validate(reasons)  # the shape the score events carry


def _model(client: TestClient) -> ConversionModel:
    return client.app.state.model


@pytest.mark.parametrize("quirk", QUIRKS)
def test_predict_explains_a_row_and_its_reasons_add_up(client, quirk) -> None:
    r = client.post("/predict?explain=true", json=dict(ROW, **quirk))
    assert r.status_code == 200, r.text
    body = r.json()
    _adds_up(body["reasons"], body["probability"])
    top = body["reasons"]["top"]
    assert len(top) == EVENT_REASONS
    assert {t["feature"] for t in top} <= set(SESSION_FEATURES)
    magnitudes = [abs(t["contribution"]) for t in top]
    assert magnitudes == sorted(magnitudes, reverse=True)
    # Explaining changes nothing else of the answer.
    plain = client.post("/predict", json=dict(ROW, **quirk)).json()
    assert {k: v for k, v in body.items() if k != "reasons"} == plain


def test_reasons_show_the_visitors_values_as_an_export_has_them(client) -> None:
    quirk = {
        "utm_medium": "never-seen-medium",
        "geo_city": "(not set)",
        "device_screen_resolution": "(not set)",
    }
    body = client.post(f"/predict?explain=true&reasons={MAX_REASONS}", json=dict(ROW, **quirk))
    values = {r["feature"]: r["value"] for r in body.json()["reasons"]["top"]}
    assert set(values) == set(SESSION_FEATURES)
    assert values["te_utm_medium"] == values["freq_utm_medium"] == "(rare value)"
    assert values["te_geo_city"] == "(not set)"
    assert values["screen_unknown"] == 1.0 and values["city_unknown"] == 1.0
    assert values["visit_number"] == 1.0


@pytest.mark.parametrize("quirk", QUIRKS)
def test_the_tier_is_the_models_and_reasons_only_come_when_asked(client, quirk) -> None:
    model = _model(client)
    assert model.tiers is not None  # the test model has thresholds
    for path in ("/predict", "/predict?explain=false", "/predict?reasons=3"):
        body = client.post(path, json=dict(ROW, **quirk)).json()
        assert "reasons" not in body
        assert body["tier"] == model.tiers.of(body["probability"])


def _tiers_of(client: TestClient, rows: list[dict]) -> set[str]:
    items = client.post("/predict/batch", json={"rows": rows}).json()["predictions"]
    return {i["tier"] for i in items}


def test_every_tier_is_reached_and_named(client) -> None:
    model = _model(client)
    assert model.tiers is not None
    # The quirks, and a visitor from the generated data's best converting channel.
    best = {"utm_source": "bByPQxmDaMXgpHeypKSM", "utm_medium": "referral", "geo_city": "Moscow"}
    rows = [
        dict(ROW, **{**q, "session_id": f"s{i}-{n}", "visit_number": n})
        for i, q in enumerate([*QUIRKS, {**best, "device_category": "desktop"}])
        for n in (1, 2, 5, 12, 40)
    ]
    items = client.post("/predict/batch", json={"rows": rows}).json()["predictions"]
    assert {i["tier"] for i in items} >= {"cold", "warm"}  # the trained thresholds
    for item in items:
        assert item["tier"] == model.tiers.of(item["probability"])
        assert "reasons" not in item
    # With thresholds between the rows' scores, every tier shows; without any, none.
    distinct = sorted({i["probability"] for i in items})
    assert len(distinct) >= 6
    third = len(distinct) // 3
    lo = (distinct[third - 1] + distinct[third]) / 2
    hi = (distinct[2 * third - 1] + distinct[2 * third]) / 2
    client.app.state.model = dataclasses.replace(model, tiers=Tiers(lo, hi))
    assert _tiers_of(client, rows) == {"cold", "warm", "hot"}
    client.app.state.model = dataclasses.replace(model, tiers=None)
    assert _tiers_of(client, rows) == {"cold"}


@pytest.mark.parametrize("shift", [0.0, 0.4, -1.3])
def test_one_rows_tier_is_the_models_judgement(client, shift) -> None:
    # The lean path judges one probability in plain floats; the model in NumPy.
    model = _model(client).with_online_shift(shift, "v#1")
    assert model.tiers is not None
    rng = np.random.default_rng(3)
    edges = [model.tiers.warm, model.tiers.hot]
    shifted = [1 / (1 + math.exp(-(_logit(e) + shift))) for e in edges]
    probs = np.concatenate(
        [rng.uniform(0, 1, 2000), np.array([0.0, 1.0, *edges, *shifted]), np.nextafter(shifted, 1)]
    )
    assert [tier_of(model, float(p)) for p in probs] == tier_names(model, probs)
    assert tier_of(dataclasses.replace(model, tiers=None), 0.99) == "cold"


@pytest.mark.parametrize("k", [1, 3, MAX_REASONS])
def test_reasons_asks_for_how_many(client, k) -> None:
    body = client.post(f"/predict?explain=true&reasons={k}", json=ROW).json()
    assert len(body["reasons"]["top"]) == k
    _adds_up(body["reasons"], body["probability"])
    if k == MAX_REASONS:
        assert body["reasons"]["rest"] == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("explain=true&reasons=0", "reasons"),
        ("explain=true&reasons=abc", "reasons"),
        (f"explain=true&reasons={MAX_REASONS + 1}", "reasons"),
        ("reasons=-1", "reasons"),
        ("explain=maybe", "explain"),
    ],
)
def test_a_bad_query_is_a_422_naming_it(client, fake_redis, query, field) -> None:
    fake_redis.record_layout(4)
    calls = [
        client.post(f"/predict?{query}", json=ROW),
        client.post(f"/predict/batch?{query}", json={"rows": [ROW]}),
        client.get(f"/sessions/abc/score?{query}"),
    ]
    for r in calls:
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["query", field]


def test_batch_items_carry_tiers_and_on_request_the_same_reasons_as_one_row(client) -> None:
    rows = [dict(ROW, session_id=f"s{i}", **q) for i, q in enumerate(QUIRKS)]
    plain = client.post("/predict/batch", json={"rows": rows}).json()
    explained = client.post("/predict/batch?explain=true&reasons=4", json={"rows": rows}).json()
    assert [{k: v for k, v in i.items() if k != "reasons"} for i in explained["predictions"]] == (
        plain["predictions"]
    )
    for row, item in zip(rows, explained["predictions"], strict=True):
        one = client.post("/predict?explain=true&reasons=4", json=row).json()
        assert item["tier"] == one["tier"]
        assert item["reasons"] == one["reasons"]
        _adds_up(item["reasons"], item["probability"])


def test_the_lean_path_answers_the_default_and_leaves_explain_to_the_route(
    model_path, monkeypatch
) -> None:
    from api.fastpath import PredictFastPath

    answered: list[bool] = []
    score = PredictFastPath._score

    def counted(self, scope, body):
        out = score(self, scope, body)
        answered.append(out is not None)
        return out

    monkeypatch.setattr(PredictFastPath, "_score", counted)
    app = create_app(ApiSettings(model_path=model_path, api_insecure_demo=True), redis=FakeRedis())
    with TestClient(app) as c:
        lean = c.post("/predict", json=ROW)
        routed = c.post("/predict?explain=true", json=ROW)
        assert "tier" in lean.json() and "reasons" not in lean.json()
        assert "reasons" in routed.json()
        assert answered == [True]  # the explained one never reached the lean path


# The stored-score path: sessions as the worker keeps them.


def _vector(model: ConversionModel, row: dict) -> np.ndarray:
    return model.session_vectors(rows_to_columns([row], SESSION_COLUMNS))


def _store(
    fake_redis,
    sid: str,
    model: ConversionModel,
    name: str,
    entry: bytes,
    vector: np.ndarray,
    state: bytes | None = None,
    latest_as_json: bytes | None = None,
) -> None:
    layout = fake_redis.record_layout(4)
    packed = keys.pack_row(
        keys.StoredRow(START, "1.2", vector.astype(np.float32).tobytes(), START_MS, CHANNEL)
    )
    fields: dict[str, bytes] = {"row": packed, name: entry, keys.LATEST_FIELD: name.encode()}
    if latest_as_json is not None:
        fields[keys.LATEST_FIELD] = latest_as_json
    if state is not None:
        fields[keys.HIT_STATE_FIELD] = state
    fake_redis.store_session(layout, sid, fields)


def _now_ms() -> int:
    return int(time.time() * 1000)


def test_stored_reasons_are_returned_as_the_stream_published_them(client, fake_redis) -> None:
    # A warm score of another model version: its own reasons need no model.
    published = {
        "log_odds": -2.1,
        "bias": -3.0,
        "top": [
            {"feature": "visit_number", "value": 1.0, "contribution": 0.5},
            {"feature": "te_utm_medium", "value": "banner", "contribution": 0.25},
        ],
        "rest": 0.15,
    }
    entry = history_entry(
        0.109097, "elsewhere", True, _now_ms(), ("elsewhere#2", 0.1), 1, published
    )
    _store(fake_redis, "warm", _model(client), "session_start:", entry, np.zeros(3))
    for path in ("/sessions/warm/score", "/sessions/warm/score?explain=true&reasons=2"):
        body = client.get(path).json()
        assert body["tier"] == "warm"
        assert body["reasons"] == published
        assert "reasons_unavailable" not in body


@pytest.mark.parametrize("quirk", QUIRKS[:3])
def test_a_cold_stored_start_is_explained_with_that_scores_calibration(
    client, fake_redis, quirk
) -> None:
    model = _model(client)
    x = _vector(model, dict(ROW, **quirk))
    made_with = model.with_online_shift(0.31, f"{model.version}#4")
    p = float(made_with.score_session_vectors(x)[0])
    entry = history_entry(p, model.version, True, _now_ms(), (f"{model.version}#4", 0.31))
    _store(fake_redis, "cold", model, "session_start:", entry, x[0])
    # The API serves another calibration now: the reasons are still the score's own.
    client.app.state.model = model.with_online_shift(-0.7, f"{model.version}#9")
    plain = client.get("/sessions/cold/score").json()
    assert plain["tier"] == "cold" and "reasons" not in plain
    assert "reasons_unavailable" not in plain
    body = client.get("/sessions/cold/score?explain=true&reasons=6").json()
    assert body["probability"] == round(p, 6)
    assert len(body["reasons"]["top"]) == 6
    assert body["reasons"]["log_odds"] == pytest.approx(_logit(p), abs=1e-4)
    _adds_up(body["reasons"], body["probability"])
    assert {k: v for k, v in body.items() if k not in ("reasons", "age_s")} == {
        k: v for k, v in plain.items() if k != "age_s"
    }


@pytest.mark.parametrize("trigger", ["hit:4", "session_end:"])
def test_a_cold_stored_in_session_score_is_explained_from_the_stored_state(
    client, fake_redis, trigger
) -> None:
    model = _model(client)
    x = _vector(model, ROW)
    counters = {"hits": 4, "max_hit_number": 4, "max_hit_time_ms": 95_000, "card_views": 2}
    state = empty_state()
    for name, value in counters.items():
        state[STATE_NAMES.index(name)] = value
    p = float(model.score_in_session(x, state[None, :])[0])
    entry = history_entry(p, model.version, START_MS + 95_000, _now_ms())
    _store(fake_redis, "inside", model, trigger, entry, x[0], hit_state(**counters))
    body = client.get("/sessions/inside/score?explain=true").json()
    assert body["trigger"] == trigger.split(":")[0]
    assert body["reasons"]["log_odds"] == pytest.approx(_logit(p), abs=1e-4)
    _adds_up(body["reasons"], body["probability"])
    hit_names = {"hits_seen", "log_hits_seen", "time_on_site_s", "card_views", "card_view_share"}
    every = {
        r["feature"]
        for r in client.get(f"/sessions/inside/score?explain=true&reasons={MAX_REASONS}").json()[
            "reasons"
        ]["top"]
    }
    assert every & hit_names  # the in-session model's features are among them


def test_a_score_of_another_model_version_is_not_explained(client, fake_redis) -> None:
    model = _model(client)
    x = _vector(model, ROW)
    entry = history_entry(0.0123, "2020-old-model", True, _now_ms())
    _store(fake_redis, "old", model, "session_start:", entry, x[0])
    r = client.get("/sessions/old/score?explain=true")
    assert r.status_code == 200
    body = r.json()
    assert body["reasons"] is None
    assert "2020-old-model" in body["reasons_unavailable"]
    assert model.version in body["reasons_unavailable"]


def test_a_state_that_moved_on_since_the_score_gives_no_reasons(client, fake_redis) -> None:
    # The stored counters are not those the score was made from (a hit came in between
    # the reads): the reasons would be another score's, so none are given.
    model = _model(client)
    x = _vector(model, ROW)
    p = float(model.score_in_session(x, empty_state()[None, :])[0])
    moved = hit_state(hits=9, max_hit_number=9, card_views=5, max_hit_time_ms=400_000)
    entry = history_entry(p, model.version, START_MS, _now_ms())
    _store(fake_redis, "moved", model, "hit:1", entry, x[0], moved)
    body = client.get("/sessions/moved/score?explain=true").json()
    assert body["reasons"] is None and "moved on" in body["reasons_unavailable"]


def test_a_latest_score_kept_as_json_is_explained_too(client, fake_redis) -> None:
    model = _model(client)
    x = _vector(model, ROW)
    p = float(model.score_session_vectors(x)[0])
    event = {
        "score_id": "x",
        "session_id": "legacy",
        "client_id": "1.2",
        "probability": round(p, 6),
        "model_version": model.version,
        "trigger": "session_start",
        "hit_number": None,
        "event_time": START,
        "scored_at": "2021-11-24T11:36:33+00:00",
    }
    _store(fake_redis, "legacy", model, "session_start:", b"", x[0], None, orjson.dumps(event))
    body = client.get("/sessions/legacy/score?explain=true").json()
    assert body["tier"] == "cold"  # a score from before tiers
    _adds_up(body["reasons"], body["probability"])


def test_the_model_card_shows_the_served_tiers(client) -> None:
    model = _model(client)
    assert model.tiers is not None
    card = client.get("/model").json()
    assert card["tiers"] == json.loads(json.dumps(model.tiers.as_dict()))
    assert card["tiers"]["warm"] <= card["tiers"]["hot"]
    client.app.state.model = dataclasses.replace(model, tiers=None)
    assert client.get("/model").json()["tiers"] is None


def test_openapi_documents_tier_explain_and_reasons(operator) -> None:
    schema = operator.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for name in ("PredictResponse", "LatestScoreResponse", "ScoreResponse"):
        props = components[name]["properties"]
        assert {"tier", "reasons"} <= set(props), name
        assert props["tier"]["description"] and props["reasons"]["description"]
    assert "reasons_unavailable" in components["LatestScoreResponse"]["properties"]
    for path, method in (
        ("/predict", "post"),
        ("/predict/batch", "post"),
        ("/sessions/{session_id}/score", "get"),
    ):
        params = {p["name"]: p for p in schema["paths"][path][method]["parameters"]}
        assert {"explain", "reasons"} <= set(params), path
        assert params["reasons"]["schema"]["maximum"] == MAX_REASONS
        assert params["reasons"]["schema"]["default"] == EVENT_REASONS


def test_the_documented_example_is_what_the_api_answers(client) -> None:
    # docs/api.md shows this call's answer from the test model: the same shape, tier and
    # reasons' features, and its figures add up.
    text = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    section = text[text.index("## Tiers and reasons") :]
    documented = json.loads(section.split("```json\n", 1)[1].split("```", 1)[0])
    row = dict(ROW, client_id="2108382700.1630000000", visit_number=3, geo_city="Moscow")
    body = client.post("/predict?explain=true&reasons=3", json=row).json()
    assert list(body) == list(documented)
    assert list(body["reasons"]) == list(documented["reasons"])
    assert body["tier"] == documented["tier"]
    assert [r["feature"] for r in body["reasons"]["top"]] == [
        r["feature"] for r in documented["reasons"]["top"]
    ]
    assert body["probability"] == pytest.approx(documented["probability"], abs=1e-3)
    _adds_up(documented["reasons"], documented["probability"])
