import json
import logging
from datetime import UTC, datetime

import pytest
from fakes import START, hit_state, row
from fastapi.testclient import TestClient

from api.main import create_app
from api.operator import create_operator_app
from api.schemas import EXAMPLE_ROW
from api.settings import ApiSettings
from artifact import load_model
from contracts import keys
from contracts.history import history_entry
from contracts.scores import score_id
from features.hits import STATE_NAMES, empty_state


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


def test_batch_rows_may_leave_out_optional_fields_in_any_order(client) -> None:
    shuffled = dict(reversed(list(EXAMPLE_ROW.items())))
    sparse = {k: EXAMPLE_ROW[k] for k in ("visit_number", "session_id", "visit_time", "visit_date")}
    some = {k: v for k, v in EXAMPLE_ROW.items() if k not in ("utm_source", "geo_city")}
    rows = [EXAMPLE_ROW, shuffled, sparse, some]
    batch = client.post("/predict/batch", json={"rows": rows})
    assert batch.status_code == 200, batch.text
    single = [client.post("/predict", json=r).json()["probability"] for r in rows]
    assert [p["probability"] for p in batch.json()["predictions"]] == pytest.approx(
        single, abs=1e-9
    )
    assert single[0] == single[1] and single[0] != single[2]


def test_a_bad_row_in_a_batch_is_a_422_naming_the_row_and_field(client) -> None:
    rows = [EXAMPLE_ROW, dict(EXAMPLE_ROW, visit_date="2021-13-45"), dict(EXAMPLE_ROW, x=1)]
    r = client.post("/predict/batch", json={"rows": rows})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [e["loc"] for e in detail] == [
        ["body", "rows", 1, "visit_date"],
        ["body", "rows", 2, "x"],
    ]
    assert "visit_date must be a date as YYYY-MM-DD" in detail[0]["msg"]


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
        ({"session_id": "a}b{c"}, "session_id"),
        ({"visit_date": "2021-11-24" * 1000}, "visit_date"),
        ({"visit_time": "14:36:32" * 1000}, "visit_time"),
        ({"session_id": "1" * 201}, "session_id"),
        ({"client_id": "has space"}, "client_id"),
    ],
)
def test_invalid_rows_get_a_422_naming_the_field(client, change, field) -> None:
    r = client.post("/predict", json=dict(EXAMPLE_ROW, **change))
    assert r.status_code == 422
    assert field in json.dumps(r.json()["detail"])


def test_a_boolean_is_not_a_visit_number_but_a_numeric_string_is(client) -> None:
    for value in (True, False):
        r = client.post("/predict", json=dict(EXAMPLE_ROW, visit_number=value))
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "visit_number"]
        batch = client.post(
            "/predict/batch", json={"rows": [dict(EXAMPLE_ROW, visit_number=value)]}
        )
        assert batch.status_code == 422
        assert batch.json()["detail"][0]["loc"] == ["body", "rows", 0, "visit_number"]
    as_text = client.post("/predict", json=dict(EXAMPLE_ROW, visit_number="7"))
    as_number = client.post("/predict", json=dict(EXAMPLE_ROW, visit_number=7))
    assert as_text.status_code == 200 and as_text.json() == as_number.json()


@pytest.mark.parametrize(
    "change",
    [
        {"visit_date": "9" * 90_000},  # a value
        {"geo_city": "9" * 90_000},  # a value over its length limit
        {"x" * 90_000: 1},  # an unknown field's name
        {"visit_number": "9" * 90_000},  # a number that is not one
    ],
)
def test_a_422_names_the_field_without_echoing_a_large_input(client, change) -> None:
    r = client.post("/predict", json=dict(EXAMPLE_ROW, **change))
    assert r.status_code == 422
    assert len(r.content) < 1_000, len(r.content)
    error = r.json()["detail"][0]
    assert "input" not in error
    field = next(iter(change))
    assert error["loc"][0] == "body"
    assert str(error["loc"][1]).startswith(field[:100])


def test_a_batch_of_bad_rows_gets_a_bounded_422_with_the_count(client) -> None:
    from api.errors import MAX_ERRORS

    rows = [dict(EXAMPLE_ROW, session_id=f"s{i}", visit_date="x" * 500) for i in range(10_000)]
    r = client.post("/predict/batch", json={"rows": rows})
    assert r.status_code == 422
    body = r.json()
    assert len(r.content) < 10_000, len(r.content)  # FastAPI's own answer: over 6 MB
    assert body["errors_total"] == 10_000
    assert [e["loc"] for e in body["detail"]] == [
        ["body", "rows", i, "visit_date"] for i in range(MAX_ERRORS)
    ]
    assert "visit_date must be a date" in body["detail"][0]["msg"]


def test_a_missing_session_id_is_named(client) -> None:
    row = {k: v for k, v in EXAMPLE_ROW.items() if k != "session_id"}
    r = client.post("/predict", json=row)
    assert r.status_code == 422
    assert "session_id" in json.dumps(r.json()["detail"])


@pytest.mark.parametrize("sid", ["a}b", "x" * 201, "with space"])
def test_a_session_id_the_worker_would_refuse_is_a_422_on_lookups(client, sid) -> None:
    for path in (f"/sessions/{sid}/score", f"/sessions/{sid}"):
        r = client.get(path)
        assert r.status_code == 422, path
        assert "session_id" in json.dumps(r.json()["detail"])


def test_a_body_that_is_not_json_is_a_422(client) -> None:
    r = client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_an_oversized_batch_is_refused(client) -> None:
    client.app.state.settings.max_batch_rows = 3
    r = client.post("/predict/batch", json={"rows": [EXAMPLE_ROW] * 4})
    assert r.status_code == 413
    assert "rows" in r.json()["detail"]


def _event(sid: str, probability: float = 0.12, hit: int | None = 3) -> bytes:
    """A latest score as the worker stores it: ScoreEvent JSON."""
    return json.dumps(
        {
            "score_id": "x",
            "session_id": sid,
            "client_id": "1.2",
            "probability": probability,
            "model_version": "v1",
            "trigger": "hit",
            "hit_number": hit,
            "event_time": "2021-11-24T14:36:32+03:00",
            "scored_at": datetime.now(UTC).isoformat(),
        }
    ).encode()


def test_latest_score_comes_from_redis(client, fake_redis) -> None:
    layout = fake_redis.record_layout(4)
    fake_redis.store_session(layout, "abc", {"row": row(), keys.LATEST_FIELD: _event("abc")})
    r = client.get("/sessions/abc/score")
    assert r.status_code == 200
    body = r.json()
    assert body["probability"] == 0.12
    assert body["hit_number"] == 3
    assert 0 <= body["age_s"] < 60


def test_latest_score_is_made_again_from_the_history_entry_it_names(client, fake_redis) -> None:
    # The worker stores ``latest`` as the name of the score's history field; the JSON
    # comes from that entry and the session's row, as the stream published it.
    layout = fake_redis.record_layout(4)
    entry = history_entry(0.27, "v9", 1_637_754_992_000.0, 1_637_754_993_000)
    fake_redis.store_session(
        layout, "abc", {"row": row(), keys.LATEST_FIELD: b"hit:7", b"hit:7": entry}
    )
    body = client.get("/sessions/abc/score").json()
    assert (body["probability"], body["model_version"]) == (0.27, "v9")
    assert (body["trigger"], body["hit_number"], body["client_id"]) == ("hit", 7, "1.2")
    assert body["event_time"].startswith("2021-11-24")
    # A name whose entry is gone is no score.
    fake_redis.store_session(layout, "gone", {"row": row(), keys.LATEST_FIELD: b"hit:3"})
    assert client.get("/sessions/gone/score").status_code == 404


def test_a_session_is_looked_for_on_its_own_partition_first(client, fake_redis) -> None:
    layout = fake_redis.record_layout(8)
    part = fake_redis.store_session(layout, "abc", {keys.LATEST_FIELD: _event("abc")})
    assert client.get("/sessions/abc/score").status_code == 200
    looked = [c for c in fake_redis.calls if c[1] != keys.layout_key()]
    assert looked == [("hget", layout.session(part, "abc"))]  # one read, none elsewhere


def test_latest_score_of_a_session_on_another_partition_is_found(client, fake_redis) -> None:
    # A producer that partitions otherwise than Kafka's default: the session's hash is
    # on another partition than its id gives; every partition is looked at.
    layout = fake_redis.record_layout(4)
    elsewhere = (layout.partition_of("abc") + 1) % 4
    event = _event("abc", probability=0.33)
    fake_redis.store_session(layout, "abc", {keys.LATEST_FIELD: event}, partition=elsewhere)
    r = client.get("/sessions/abc/score")
    assert r.status_code == 200, r.text
    assert r.json()["probability"] == 0.33


def test_unknown_session_is_a_404(client, fake_redis) -> None:
    fake_redis.record_layout(4)
    r = client.get("/sessions/nope/score")
    assert r.status_code == 404
    assert "nope" in r.json()["detail"]


def _stored_everywhere(fake_redis, layout: keys.Layout, sid: str) -> None:
    """A whole session on every partition of a layout, with a parked hit each."""
    for p in range(layout.partitions):
        fake_redis.store_session(
            layout,
            sid,
            {
                "row": row(),
                "ready": "1",
                keys.LATEST_FIELD: _event(sid),
                "session_start:": history_entry(0.1, "v1", True, 0),
            },
            partition=p,
        )
        fake_redis.lists[layout.pending(p, sid)] = [b"{}"]


@pytest.mark.parametrize("path", ["/sessions/abc/score", "/sessions/abc"])
def test_without_a_recorded_layout_a_session_is_a_404(client, fake_redis, path) -> None:
    _stored_everywhere(fake_redis, keys.Layout(keys.KEY_PREFIX, 4), "abc")
    r = client.get(path)
    assert r.status_code == 404
    assert "abc" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/sessions/abc/score", "/sessions/abc"])
def test_a_layout_of_another_version_is_not_read(client, fake_redis, path) -> None:
    layout = fake_redis.record_layout(4, version=keys.LAYOUT_VERSION + 1)
    _stored_everywhere(fake_redis, layout, "abc")
    assert client.get(path).status_code == 404


def test_the_layout_and_sessions_are_read_under_the_configured_prefix(
    model_path, fake_redis
) -> None:
    theirs = fake_redis.record_layout(4)  # another deployment's, under the default prefix
    _stored_everywhere(fake_redis, theirs, "abc")
    app = create_app(
        ApiSettings(model_path=model_path, redis_key_prefix="acme", api_insecure_demo=True),
        redis=fake_redis,
    )
    with TestClient(app) as c:
        assert c.get("/sessions/abc/score").status_code == 404
        ours = fake_redis.record_layout(3, prefix="acme")
        fake_redis.store_session(ours, "abc", {keys.LATEST_FIELD: _event("abc", 0.5)})
        r = c.get("/sessions/abc/score")
        assert r.status_code == 200, r.text
        assert r.json()["probability"] == 0.5


def test_model_card_and_health_carry_the_version(client, model_path) -> None:
    version = load_model(model_path).version
    assert client.get("/health").json() == {"status": "ok", "model_version": version}
    card = client.get("/model").json()
    assert card["version"] == version
    assert "session_features" in card


def test_openapi_shows_a_real_looking_example(operator) -> None:
    schema = operator.get("/openapi.json").json()
    row = schema["components"]["schemas"]["SessionRow"]
    assert row["examples"][0]["session_id"] == EXAMPLE_ROW["session_id"]


def _score(sid: str, trigger: str, hit: int | None, p: float) -> bytes:
    return json.dumps(
        {
            "score_id": f"{sid}-{trigger}-{hit}",
            "session_id": sid,
            "client_id": "1.2",
            "probability": p,
            "model_version": "v1",
            "trigger": trigger,
            "hit_number": hit,
            "event_time": "2021-11-24T14:36:32+03:00",
            "scored_at": datetime.now(UTC).isoformat(),
        }
    ).encode()


def test_session_state_shows_counters_and_bounded_history(client, fake_redis) -> None:
    from api.routes import HISTORY_LIMIT

    layout = fake_redis.record_layout(4)
    sid = "s1"
    fields: dict[str, bytes | str] = {
        "row": row(client_id="1.2"),
        "ready": "1",
        keys.HIT_STATE_FIELD: hit_state(hits=60.0, card_views=7.0),
        # The session hash's other fields are not scores.
        keys.LATEST_FIELD: _score(sid, "hit", 60, 0.6),
        "p": "0.6",
        "hits": "60",
        "session_start:": _score(sid, "session_start", None, 0.02),
    }
    for k in range(1, 61):
        fields[f"hit:{k}"] = _score(sid, "hit", k, k / 100)
    fake_redis.store_session(layout, sid, fields)
    r = client.get(f"/sessions/{sid}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True
    assert body["hits_applied"] == 60 and body["pending_hits"] == 0
    assert body["state"]["card_views"] == 7.0
    assert body["state"]["max_hit_time_ms"] == -1.0  # never written: the empty state's value
    assert body["scores_total"] == 61
    assert len(body["scores"]) == HISTORY_LIMIT
    assert [s["hit_number"] for s in body["scores"]] == list(range(11, 61))
    # Its client id and start are what its packed row gave.
    assert (body["client_id"], body["start"]) == ("1.2", START)


def test_session_state_reads_the_packed_counters(client, fake_redis) -> None:
    layout = fake_redis.record_layout(4)
    sid = "packed"
    fake_redis.store_session(
        layout,
        sid,
        {
            "row": row(),
            keys.HIT_STATE_FIELD: hit_state(hits=4.0, photo_views=2.0, max_hit_time_ms=900.0),
            "session_start:": _score(sid, "session_start", None, 0.02),
        },
    )
    body = client.get(f"/sessions/{sid}").json()
    assert body["state"]["hits"] == 4.0 and body["state"]["photo_views"] == 2.0
    assert body["state"]["max_hit_time_ms"] == 900.0
    assert body["state"]["card_views"] == 0.0


def test_counters_stored_before_a_counter_was_added_read_it_empty(client, fake_redis) -> None:
    layout = fake_redis.record_layout(4)
    sid = "older"
    last = STATE_NAMES[-1]
    stored = hit_state(hits=3.0, **{last: 5.0})[:-8]  # a vector one counter shorter
    fake_redis.store_session(layout, sid, {"row": row(), keys.HIT_STATE_FIELD: stored})
    body = client.get(f"/sessions/{sid}").json()
    assert body["state"]["hits"] == 3.0
    assert body["state"][last] == empty_state()[-1]


def test_a_session_without_counters_shows_the_empty_state(client, fake_redis) -> None:
    layout = fake_redis.record_layout(4)
    fake_redis.store_session(layout, "fresh", {"row": row()})
    body = client.get("/sessions/fresh").json()
    assert body["state"] == dict(zip(STATE_NAMES, empty_state().tolist(), strict=True))
    assert body["ready"] is False and body["hits_applied"] == 0 and body["scores"] == []


def test_session_history_ends_with_its_closing_score(client, fake_redis) -> None:
    layout = fake_redis.record_layout(4)
    sid = "s2"
    fake_redis.store_session(
        layout,
        sid,
        {
            "row": row(),
            "ready": "1",
            "closed": "1",
            "conv": "1",
            "outcome": b'{"session_id":"s2","converted":true}',
            keys.LATEST_FIELD: _score(sid, "session_end", None, 0.3),
            "session_end:": _score(sid, "session_end", None, 0.3),
            "hit:2": _score(sid, "hit", 2, 0.2),
            "session_start:": _score(sid, "session_start", None, 0.01),
            "hit:1": _score(sid, "hit", 1, 0.1),
        },
    )
    body = client.get(f"/sessions/{sid}").json()
    assert body["scores_total"] == 4
    assert [(s["trigger"], s["hit_number"]) for s in body["scores"]] == [
        ("session_start", None),
        ("hit", 1),
        ("hit", 2),
        ("session_end", None),
    ]


def test_session_history_kept_compact_comes_back_as_the_published_scores(
    client, fake_redis
) -> None:
    layout = fake_redis.record_layout(4)
    sid, start = "s3", "2021-11-24T14:36:32+03:00"
    scored_ms = 1_764_357_116_645
    fake_redis.store_session(
        layout,
        sid,
        {
            "row": row(client_id="1.2", start=start),
            "hit:1": history_entry(0.25, "v2", 1_637_753_800_500.0, scored_ms),
            "session_start:": history_entry(0.125, "v1", True, scored_ms),
        },
    )
    body = client.get(f"/sessions/{sid}").json()
    first, hit = body["scores"]
    assert (hit["hit_number"], hit["event_time"], hit["model_version"]) == (
        1,
        "2021-11-24T14:36:40.500+03:00",
        "v2",
    )
    assert hit["scored_at"] == "2025-11-28T19:11:56.645+00:00"
    assert (first["trigger"], first["probability"], first["model_version"]) == (
        "session_start",
        0.125,
        "v1",
    )
    assert first["score_id"] == score_id(sid, "session_start", None, "v1")
    # The start score's event time is the session's start, and every score's client id
    # the session's: both from its packed row.
    assert first["event_time"] == start
    assert first["client_id"] == "1.2" and hit["client_id"] == "1.2"


def test_session_with_only_parked_hits_is_known_and_not_ready(client, fake_redis) -> None:
    layout = fake_redis.record_layout(4)
    fake_redis.lists[layout.pending(layout.partition_of("early"), "early")] = [b"{}", b"{}"]
    body = client.get("/sessions/early").json()
    assert body["ready"] is False and body["pending_hits"] == 2 and body["scores"] == []


def test_session_state_of_a_session_on_another_partition_is_found(client, fake_redis) -> None:
    layout = fake_redis.record_layout(4)
    sid = "moved"
    elsewhere = (layout.partition_of(sid) + 2) % 4
    fake_redis.store_session(
        layout,
        sid,
        {
            "row": row(client_id="9.9"),
            "ready": "1",
            keys.HIT_STATE_FIELD: hit_state(hits=2.0),
            "session_start:": _score(sid, "session_start", None, 0.02),
            "hit:1": _score(sid, "hit", 1, 0.1),
            "hit:2": _score(sid, "hit", 2, 0.2),
        },
        partition=elsewhere,
    )
    fake_redis.lists[layout.pending(elsewhere, sid)] = [b"{}"]
    r = client.get(f"/sessions/{sid}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ready"] is True and body["hits_applied"] == 2
    assert body["state"]["hits"] == 2.0 and body["pending_hits"] == 1
    assert body["scores_total"] == 3
    assert body["client_id"] == "9.9"


def test_unknown_session_state_is_a_404(client, fake_redis) -> None:
    fake_redis.record_layout(4)
    r = client.get("/sessions/never-seen")
    assert r.status_code == 404
    assert "never-seen" in r.json()["detail"]


def test_ready_when_model_and_redis_answer(client, fake_redis, caplog) -> None:
    r = client.get("/ready")
    assert r.status_code == 200
    assert r.json()["checks"] == {"model": "loaded", "redis": "ok"}
    fake_redis.down = True
    with caplog.at_level(logging.WARNING, logger="api.routes"):
        r = client.get("/ready")
    assert r.status_code == 503
    assert r.json()["status"] == "not ready"
    # Redis's own words are logged, not sent to whoever asked.
    assert r.json()["checks"]["redis"] == "unreachable"
    assert "Connection refused" not in r.text
    assert "Connection refused" in caplog.text


def test_ready_and_health_need_no_key(keyed_client) -> None:
    assert keyed_client.get("/ready").status_code == 200
    assert keyed_client.get("/health").status_code == 200
    assert keyed_client.get("/sessions/x").status_code == 401


def test_metrics_count_requests_by_route_template(client, operator) -> None:
    client.post("/predict", json=EXAMPLE_ROW)
    client.get("/sessions/a-session/score")
    client.get("/sessions/other/score")
    text = operator.get("/metrics").text
    assert 'scorer_api_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert (
        'scorer_api_requests_total{method="GET",route="/sessions/{session_id}/score",'
        'status="404"} 2.0'
    ) in text
    assert "a-session" not in text
    assert 'scorer_api_request_seconds_bucket{le="0.005",route="/predict"}' in text
    assert "scorer_api_rows_scored_total 1.0" in text
    assert "scorer_api_model_info{version=" in text


def test_a_body_over_the_limit_is_refused_before_parsing(model_path, fake_redis) -> None:
    app = create_app(
        ApiSettings(model_path=model_path, max_body_bytes=2_000, api_insecure_demo=True),
        redis=fake_redis,
    )
    with TestClient(app) as c:
        big = {"rows": [EXAMPLE_ROW] * 10}
        r = c.post("/predict/batch", json=big)
        assert r.status_code == 413
        assert "body" in r.json()["detail"] and "2000" in r.json()["detail"]

        def chunks():  # no content-length: the body arrives in chunks
            payload = json.dumps(big).encode()
            for i in range(0, len(payload), 500):
                yield payload[i : i + 500]

        r = c.post("/predict/batch", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/predict", json=EXAMPLE_ROW).status_code == 200
        assert 'status="413"' in TestClient(create_operator_app(app)).get("/metrics").text


def test_a_new_artifact_is_picked_up_and_a_broken_one_is_not(
    model_path, fake_redis, tmp_path
) -> None:
    import shutil
    import time

    from artifact import read_card, save_model

    deployed = tmp_path / "models"
    deployed.mkdir()
    for name in ("Pickled_model.pkl", "model_card.json"):
        shutil.copy(model_path.with_name(name), deployed / name)
    path = deployed / "Pickled_model.pkl"
    app = create_app(
        ApiSettings(model_path=path, model_reload_s=0.05, api_insecure_demo=True), redis=fake_redis
    )
    ops = TestClient(create_operator_app(app))

    def wait_for(version: str) -> bool:
        for _ in range(100):
            if c.get("/health").json()["model_version"] == version:
                return True
            time.sleep(0.05)
        return False

    with TestClient(app) as c:
        old = c.get("/health").json()["model_version"]
        model = load_model(path)
        model.version = "retrained-v2"
        card = {k: v for k, v in read_card(path).items() if k != "artifact_sha256"}
        save_model(model, deployed, card)
        assert wait_for("retrained-v2")
        assert c.get("/model").json()["version"] == "retrained-v2"
        assert c.post("/predict", json=EXAMPLE_ROW).json()["model_version"] == "retrained-v2"

        # A pickle that does not match its card is never loaded.
        card = json.loads((deployed / "model_card.json").read_text())
        card["artifact_sha256"] = "0" * 64
        (deployed / "model_card.json").write_text(json.dumps(card))
        time.sleep(0.5)
        assert c.get("/health").json()["model_version"] == "retrained-v2"
        assert 'scorer_api_model_reloads_total{result="failed"} 1.0' in ops.get("/metrics").text
        assert old != "retrained-v2"
