import random
from datetime import UTC, datetime

import orjson
import pytest

from contracts.scores import ScoreEvent
from features.columns import HIT_COLUMNS
from stream.logic import (
    HIT_FIELDS,
    MSK,
    BadEvent,
    history_entry,
    history_field,
    hit_time,
    iso_from_ms,
    parse_hit,
    parse_session,
    score_event,
    score_from_history,
    start_time,
    utc_iso,
)
from stream.processor import Record, dead_letter

SESSION = {
    "session_id": "9055434745589932991.1637753792.1637753792",
    "client_id": "2108382700.1637753791",
    "visit_date": "2021-11-24",
    "visit_time": "14:36:32",
    "visit_number": 1,
    "utm_source": "ZpYIoDJMcFzVoPFsHGJL",
    "utm_medium": "banner",
    "utm_campaign": None,
    "utm_adcontent": None,
    "utm_keyword": None,
    "device_category": "mobile",
    "device_os": None,
    "device_brand": "Huawei",
    "device_model": None,
    "device_screen_resolution": "0x0",
    "device_browser": "Chrome",
    "geo_country": "Russia",
    "geo_city": "(not set)",
}
HIT = {
    "session_id": SESSION["session_id"],
    "hit_date": "2021-11-24",
    "hit_time": 15000.0,
    "hit_number": 3,
    "hit_type": "event",
    "hit_referer": None,
    "hit_page_path": "podpiska.sberauto.com/",
    "event_category": "card_web",
    "event_action": "view_card",
    "event_label": None,
    "event_value": None,
}


def test_a_valid_session_event_keeps_its_fields() -> None:
    row = parse_session(orjson.dumps(SESSION))
    assert row == SESSION


def test_the_visit_time_is_moscow_time() -> None:
    assert start_time(SESSION).timestamp() == 1637753792


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not an object"),
        (orjson.dumps({**SESSION, "session_id": None}), "session_id"),
        (orjson.dumps({**SESSION, "visit_number": "x"}), "visit_number is not a number"),
        (orjson.dumps({**SESSION, "visit_number": 0}), "at least 1"),
        (orjson.dumps({**SESSION, "visit_date": "24.11.2021"}), "not a date"),
        (orjson.dumps({**SESSION, "utm_medium": 5}), "utm_medium must be a string"),
        (None, "empty"),
    ],
)
def test_bad_session_events_say_why(raw, message) -> None:
    with pytest.raises(BadEvent, match=message):
        parse_session(raw)


def test_a_string_hit_number_from_a_csv_is_accepted() -> None:
    hit = parse_hit(orjson.dumps({**HIT, "hit_number": "3", "hit_time": "15000"}))
    assert hit["hit_number"] == 3
    assert hit["hit_time"] == 15000.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hit_number": None}, "hit_number is missing"),
        ({"hit_number": 2.5}, "whole number"),
        ({"hit_time": "soon"}, "hit_time is not a number"),
        ({"event_action": 7}, "event_action"),
    ],
)
def test_bad_hit_events_say_why(change, message) -> None:
    with pytest.raises(BadEvent, match=message):
        parse_hit(orjson.dumps({**HIT, **change}))


def test_hit_event_time_adds_hit_time_to_the_start() -> None:
    start = start_time(SESSION).isoformat()
    assert hit_time(start, 90_000.0) == "2021-11-24T14:38:02+03:00"
    assert hit_time(start, None) == start


def test_score_events_have_deterministic_ids_and_match_the_contract() -> None:
    kwargs = dict(
        session_id="s",
        client_id="c",
        probability=0.1234567,
        model_version="v1",
        trigger="hit",
        hit_number=4,
        event_time=None,
    )
    a, b = score_event(**kwargs), score_event(**kwargs)
    assert a["score_id"] == b["score_id"]
    assert score_event(**{**kwargs, "hit_number": 5})["score_id"] != a["score_id"]
    assert score_event(**{**kwargs, "model_version": "v2"})["score_id"] != a["score_id"]
    ScoreEvent.model_validate(a)
    assert a["probability"] == 0.123457


def test_a_dead_letter_keeps_the_original_bytes_and_the_source() -> None:
    rec = Record(value=b"\xff{bad", topic="ga.hits", partition=2, offset=41, key=b"k")
    letter = orjson.loads(dead_letter(rec, "parse", "value is not JSON"))
    assert letter["source_topic"] == "ga.hits"
    assert (letter["partition"], letter["offset"]) == (2, 41)
    assert letter["stage"] == "parse"
    import base64

    assert base64.b64decode(letter["original_base64"]) == b"\xff{bad"


@pytest.mark.parametrize(
    "args",
    [
        ("s1", "hit", 3, "v1"),
        ("905.1629726000.1629726000", "session_start", None, "20211124T000000Z-ab12"),
        ("é", "session_end", None, ""),
    ],
)
def test_score_ids_are_the_uuid5_of_their_fields(args) -> None:
    import uuid

    from contracts.scores import _SCORE_NAMESPACE, score_id

    sid, trigger, hit, version = args
    name = f"{sid}|{trigger}|{'' if hit is None else hit}|{version}"
    assert score_id(*args) == str(uuid.uuid5(_SCORE_NAMESPACE, name))


def test_iso_from_ms_gives_the_text_datetime_gives() -> None:
    rng = random.Random(5)
    values = [0.0, 1.0, 999.0, 1_000.0, -1.0, 1_640_995_200_000.0, 1_640_995_199_999.5]
    values += [rng.uniform(1.5e12, 1.8e12) for _ in range(2_000)]
    values += [float(rng.randrange(1_500_000_000_000, 1_800_000_000_000)) for _ in range(2_000)]
    for ms in values:
        expected = datetime.fromtimestamp(ms / 1000.0, MSK).isoformat(timespec="milliseconds")
        assert iso_from_ms(ms) == expected, ms


def test_a_parsed_hit_keeps_the_fields_the_worker_reads() -> None:
    assert set(HIT_FIELDS) <= set(HIT_COLUMNS)
    hit = parse_hit(orjson.dumps({**HIT, "extra": 1}))
    assert list(hit) == list(HIT_FIELDS)
    assert hit["session_id"] == HIT["session_id"]
    assert hit["event_action"] == HIT["event_action"]


@pytest.mark.parametrize("ms", [0, 999, 1_764_357_116_645, 1_764_357_116_000, 1_764_357_116_001])
def test_utc_iso_is_the_isoformat_of_that_millisecond(ms: int) -> None:
    at = datetime.fromtimestamp(ms / 1000, UTC).replace(microsecond=(ms % 1000) * 1000)
    assert utc_iso(ms) == at.isoformat(timespec="milliseconds")


def _published(trigger: str, hit_number: int | None, event_time: str | None) -> dict:
    return score_event(
        session_id=SESSION["session_id"],
        client_id=SESSION["client_id"],
        probability=0.031422123456,
        model_version="20261128T191146Z-a7e59150",
        trigger=trigger,
        hit_number=hit_number,
        event_time=event_time,
        scored_at=utc_iso(1_764_357_116_645),
    )


START = "2021-11-24T14:36:32+03:00"


@pytest.mark.parametrize(
    ("trigger", "hit_number", "event", "event_time"),
    [
        ("session_start", None, True, START),
        ("hit", 7, 1_637_753_792_123.4, iso_from_ms(1_637_753_792_123.4)),
        ("hit", 8, None, None),
        ("session_end", None, 1_637_755_000_999.9, iso_from_ms(1_637_755_000_999.9)),
    ],
)
def test_a_history_entry_gives_back_the_published_json_byte_for_byte(
    trigger: str, hit_number: int | None, event: float | bool | None, event_time: str | None
) -> None:
    published = orjson.dumps(_published(trigger, hit_number, event_time))
    entry = history_entry(0.031422123456, "20261128T191146Z-a7e59150", event, 1_764_357_116_645)
    assert len(entry) < 64  # Redis keeps a hash of such values as a listpack
    name = history_field(trigger, hit_number)
    again = score_from_history(SESSION["session_id"], SESSION["client_id"], START, name, entry)
    assert again == published


def test_a_history_entry_kept_as_json_comes_back_as_it_is() -> None:
    published = orjson.dumps(_published("hit", 3, START))
    assert score_from_history(SESSION["session_id"], None, None, "hit:3", published) == published


def test_a_session_without_client_id_gets_null_back() -> None:
    entry = history_entry(0.5, "v1", None, 0)
    event = orjson.loads(score_from_history("s1", None, None, "hit:2", entry))
    assert event["client_id"] is None and event["hit_number"] == 2
    assert event["scored_at"] == "1970-01-01T00:00:00.000+00:00"
