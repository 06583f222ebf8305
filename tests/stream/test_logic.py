import orjson
import pytest

from features.columns import HIT_COLUMNS
from stream.logic import (
    HIT_FIELDS,
    BadEvent,
    hit_time,
    parse_hit,
    parse_session,
    start_time,
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


def test_a_dead_letter_keeps_the_original_bytes_and_the_source() -> None:
    rec = Record(value=b"\xff{bad", topic="ga.hits", partition=2, offset=41, key=b"k")
    letter = orjson.loads(dead_letter(rec, "parse", "value is not JSON"))
    assert letter["source_topic"] == "ga.hits"
    assert (letter["partition"], letter["offset"]) == (2, 41)
    assert letter["stage"] == "parse"
    import base64

    assert base64.b64decode(letter["original_base64"]) == b"\xff{bad"


def test_a_parsed_hit_keeps_the_fields_the_worker_reads() -> None:
    assert set(HIT_FIELDS) <= set(HIT_COLUMNS)
    hit = parse_hit(orjson.dumps({**HIT, "extra": 1}))
    assert list(hit) == list(HIT_FIELDS)
    assert hit["session_id"] == HIT["session_id"]
    assert hit["event_action"] == HIT["event_action"]
