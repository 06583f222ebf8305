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


# ---- hostile values: every bound is checked, every message stays small ------------------

HUGE = "x" * 300_000
BIG = "<2**64 + 5>"  # orjson writes no such integer: _raw puts it in the JSON text


def _raw(event: dict) -> bytes:
    return orjson.dumps(event).replace(b'"<2**64 + 5>"', str(2**64 + 5).encode())


@pytest.mark.parametrize(
    ("change", "kind", "message"),
    [
        ({"hit_number": BIG}, "out_of_bounds", "hit_number must be at most 100000"),
        ({"hit_number": -3}, "out_of_bounds", "at least 1"),
        ({"hit_number": "9" * 400}, "wrong_type", "hit_number is not a number"),
        ({"hit_time": 1e15}, "out_of_bounds", "hit_time must be 0..86400000"),
        ({"hit_time": -5.0}, "out_of_bounds", "hit_time"),
        ({"hit_time": True}, "wrong_type", "hit_time"),
        ({"session_id": "a}b{c"}, "bad_id", "session_id"),
        ({"session_id": "1" * 201}, "bad_id", "201 characters"),
        ({"hit_page_path": "p" * 5000}, "too_long", "5000 characters"),
        ({"event_label": {"nested": [1, 2]}}, "wrong_type", "event_label"),
        ({"hit_referer": HUGE}, "too_large", "bytes, more than 65536"),
    ],
)
def test_hostile_hit_values_are_refused_with_a_short_reason(change, kind, message) -> None:
    with pytest.raises(BadEvent, match=message) as caught:
        parse_hit(_raw({**HIT, **change}))
    assert caught.value.kind == kind
    assert len(str(caught.value)) <= 200


@pytest.mark.parametrize(
    ("change", "kind", "message"),
    [
        ({"visit_number": BIG}, "out_of_bounds", "visit_number must be at most"),
        ({"visit_date": "9999-12-31"}, "out_of_bounds", "after the worker's clock"),
        ({"visit_date": "2126-01-01"}, "out_of_bounds", "after the worker's clock"),
        ({"visit_date": "1970-01-01"}, "out_of_bounds", "before 2005-01-01"),
        ({"visit_date": "20211124"}, "bad_date", "not a date"),
        ({"visit_time": "25:00:00"}, "bad_date", "not a date"),
        ({"visit_time": "1" * 5000}, "too_long", "5000 characters"),
        ({"client_id": "c" * 300}, "bad_id", "client_id"),
        ({"client_id": "a b"}, "bad_id", "client_id"),
        ({"utm_source": "s" * 201}, "too_long", "utm_source"),
        ({"geo_city": ["Moscow"]}, "wrong_type", "geo_city"),
        ({"utm_campaign": HUGE}, "too_large", "more than 65536"),
    ],
)
def test_hostile_session_values_are_refused_with_a_short_reason(change, kind, message) -> None:
    with pytest.raises(BadEvent, match=message) as caught:
        parse_session(_raw({**SESSION, **change}))
    assert caught.value.kind == kind
    assert len(str(caught.value)) <= 200


def test_a_visit_of_today_and_a_ga_csv_quirk_are_accepted() -> None:
    from datetime import datetime

    from contracts.times import MSK

    now = datetime.now(MSK)
    row = parse_session(
        orjson.dumps({**SESSION, "visit_date": now.date().isoformat(), "visit_time": "00:00:00"})
    )
    assert row["visit_date"] == now.date().isoformat()
    hit = parse_hit(orjson.dumps({**HIT, "hit_time": "nan", "hit_number": "500.0"}))
    assert hit["hit_time"] is None and hit["hit_number"] == 500


def test_a_dead_letter_of_a_huge_record_fits_its_topic_and_names_the_whole() -> None:
    import base64
    import hashlib

    from contracts import limits

    raw = orjson.dumps({**HIT, "hit_page_path": HUGE})
    rec = Record(value=raw, topic="ga.hits", partition=0, offset=7, key=b"k" * 10_000)
    letter_bytes = dead_letter(rec, "parse", "e" * 100_000, "too_large")
    assert len(letter_bytes) < 8 * limits.DEAD_LETTER_ORIGINAL_MAX_BYTES
    letter = orjson.loads(letter_bytes)
    assert letter["original_truncated"] is True
    assert letter["original_bytes"] == len(raw)
    assert letter["original_sha256"] == hashlib.sha256(raw).hexdigest()
    kept = base64.b64decode(letter["original_base64"])
    assert raw.startswith(kept) and len(kept) == limits.DEAD_LETTER_ORIGINAL_MAX_BYTES
    assert len(letter["error"]) == limits.ERROR_MAX_CHARS
    assert len(letter["key"]) == limits.ID_MAX_CHARS
    assert letter["kind"] == "too_large"


def test_a_small_dead_letter_keeps_the_whole_original() -> None:
    rec = Record(value=b"{bad", topic="ga.hits", partition=0, offset=1)
    letter = orjson.loads(dead_letter(rec, "parse", "value is not JSON"))
    assert letter["original_truncated"] is False and letter["original_bytes"] == 4
