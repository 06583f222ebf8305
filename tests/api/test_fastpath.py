"""The lean /predict path answers exactly as the FastAPI route would."""

from pathlib import Path

import orjson
import pytest
from access_keys import DASHBOARD, DASHBOARD_KEY, SCORING, SCORING_KEY
from fakes import FakeRedis
from fastapi.testclient import TestClient

from api.fastpath import PredictFastPath
from api.main import create_app
from api.operator import create_operator_app
from api.schemas import EXAMPLE_ROW
from api.settings import ApiSettings
from stream.replay import build_events
from training.generate import generate


def _clients(model_path: Path, **settings: object) -> tuple[TestClient, TestClient]:
    """The app as served, and the same app without the lean path (an open demo unless
    keys are given)."""
    if "api_key" not in settings:
        settings["api_insecure_demo"] = True
    cfg = ApiSettings(model_path=model_path, **settings)
    lean = create_app(cfg, redis=FakeRedis())
    plain = create_app(cfg, redis=FakeRedis())
    plain.user_middleware = [m for m in plain.user_middleware if m.cls is not PredictFastPath]
    return TestClient(lean), TestClient(plain)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    import orjson

    data = tmp_path_factory.mktemp("fastpath")
    generate(data, 300, seed=17, progress=False)
    return [orjson.loads(v) for t, _, v in build_events(data) if t == "ga.sessions"]


def test_scores_are_byte_for_byte_those_of_the_route(
    model_path: Path, rows: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    answered = []
    score = PredictFastPath._score

    def counted(self: PredictFastPath, scope: dict, body: bytes) -> bytes | None:
        out = score(self, scope, body)
        answered.append(out is not None)
        return out

    monkeypatch.setattr(PredictFastPath, "_score", counted)
    lean, plain = _clients(model_path)
    with lean, plain:
        for row in rows:
            a = lean.post("/predict", json=row)
            b = plain.post("/predict", json=row)
            assert a.status_code == b.status_code == 200
            assert a.content == b.content
            assert a.headers["content-type"] == b.headers["content-type"]
    assert len(answered) == len(rows) and all(answered)  # the lean path did answer them


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"session_id": ', {"content-type": "application/json"}),  # not JSON
        (b"[1, 2]", {"content-type": "application/json"}),  # not an object
        (b'{"session_id": "x"}', {"content-type": "application/json"}),  # fields missing
        (  # a boolean is no visit number
            orjson.dumps(dict(EXAMPLE_ROW, visit_number=True)),
            {"content-type": "application/json"},
        ),
        (  # a large invalid value: the 422 names it without repeating it
            orjson.dumps(dict(EXAMPLE_ROW, visit_date="9" * 90_000)),
            {"content-type": "application/json"},
        ),
        (None, {"content-type": "text/plain"}),  # a valid row, but not said to be JSON
        (None, {}),  # a valid row without a content type
    ],
)
def test_errors_are_the_routes_own(model_path: Path, body: bytes | None, headers: dict) -> None:
    import orjson

    payload = orjson.dumps(EXAMPLE_ROW) if body is None else body
    lean, plain = _clients(model_path)
    with lean, plain:
        a = lean.post("/predict", content=payload, headers=headers)
        b = plain.post("/predict", content=payload, headers=headers)
    assert a.status_code == b.status_code == 422
    assert a.json() == b.json()
    assert len(a.content) < 1_000 and "input" not in a.json()["detail"][0]


def test_a_json_subtype_and_a_chunked_body_are_scored(model_path: Path) -> None:
    import orjson

    lean, plain = _clients(model_path)
    payload = orjson.dumps(EXAMPLE_ROW)
    with lean, plain:
        a = lean.post(
            "/predict",
            content=iter([payload[:50], payload[50:]]),  # no content-length: chunked
            headers={"content-type": "application/vnd.sber+json; charset=utf-8"},
        )
        b = plain.post("/predict", json=EXAMPLE_ROW)
    assert a.status_code == 200 and a.content == b.content


def test_the_key_is_checked_and_a_wrong_one_gets_the_routes_answer(model_path: Path) -> None:
    lean, plain = _clients(model_path, api_key=SCORING_KEY, dashboard_key=DASHBOARD_KEY)
    with lean, plain:
        for headers, status in [
            ({}, 401),
            ({"X-API-Key": "nope"}, 401),
            ({"X-API-Key": SCORING_KEY + "x"}, 401),
            ({"X-API-Key": "ключ".encode()}, 401),  # not ASCII: refused, not a server error
            (DASHBOARD, 403),  # the dashboard's key does not score
            (SCORING, 200),
        ]:
            a = lean.post("/predict", json=EXAMPLE_ROW, headers=headers)
            b = plain.post("/predict", json=EXAMPLE_ROW, headers=headers)
            assert a.status_code == b.status_code == status, headers
            assert a.content == b.content
        wrong = lean.post("/predict", json=EXAMPLE_ROW, headers={"X-API-Key": "nope"})
        assert "X-API-Key" in wrong.json()["detail"]


def test_lean_answers_are_counted_under_the_route_template(model_path: Path) -> None:
    lean, _ = _clients(model_path)
    with lean:
        for _ in range(3):
            lean.post("/predict", json=EXAMPLE_ROW)
        text = TestClient(create_operator_app(lean.app)).get("/metrics").text
    assert 'scorer_api_requests_total{method="POST",route="/predict",status="200"} 3.0' in text
    assert "scorer_api_rows_scored_total 3.0" in text
