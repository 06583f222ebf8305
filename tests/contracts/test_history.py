"""A session's score history: each entry gives back its published JSON."""

from typing import Any

import msgpack
import orjson
import pytest

from contracts.history import (
    history_entry,
    history_field,
    pack_reasons,
    score_from_history,
    trajectory,
    unpack_reasons,
)
from contracts.scores import score_event
from contracts.times import iso_from_ms, utc_iso

SESSION = {
    "session_id": "9055434745589932991.1637753792.1637753792",
    "client_id": "2108382700.1637753791",
}


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


def test_a_trajectory_is_in_session_order_and_skips_what_it_cannot_read() -> None:
    history = {
        b"session_end:": history_entry(0.05, "v1", 1_000.0, 0),
        b"hit:10": history_entry(0.4, "v1", None, 0),
        b"hit:2": orjson.dumps({"probability": 0.2}),  # kept as JSON, as before
        b"session_start:": history_entry(0.1, "v1", True, 0),
        b"hit:3": b"{}",
        b"hit:x": history_entry(0.9, "v1", None, 0),
    }
    assert trajectory(history, 30) == [0.1, 0.2, 0.4, 0.05]
    assert trajectory(history, 2) == [0.4, 0.05]
    assert trajectory({}, 30) == []


def test_a_score_made_with_an_online_calibration_comes_back_with_it() -> None:
    calibration = ("20261128T191146Z-a7e59150#4", -0.412345678)
    event = score_event(
        session_id=SESSION["session_id"],
        client_id=SESSION["client_id"],
        probability=0.0211,
        model_version="20261128T191146Z-a7e59150",
        trigger="hit",
        hit_number=3,
        event_time=iso_from_ms(1_637_753_792_123.4),
        scored_at=utc_iso(1_764_357_116_645),
        calibration=calibration,
    )
    assert event["calibration_id"] == calibration[0]
    assert event["calibration_shift"] == -0.412346
    entry = history_entry(
        0.0211, "20261128T191146Z-a7e59150", 1_637_753_792_123.4, 1_764_357_116_645, calibration
    )
    again = score_from_history(
        SESSION["session_id"], SESSION["client_id"], None, history_field("hit", 3), entry
    )
    assert again == orjson.dumps(event)
    # An entry of the offline calibration keeps the four items it always had.
    plain = history_entry(0.0211, "v", None, 0)
    assert len(plain) < len(entry)
    assert orjson.loads(score_from_history("s", None, None, "hit:1", plain))["calibration_id"] == (
        "offline"
    )


REASONS: dict[str, Any] = {
    "log_odds": -1.5,
    "bias": -3.25,
    "top": [
        {"feature": "te_utm_medium", "value": "banner", "contribution": 0.75},
        {"feature": "card_views", "value": 4.0, "contribution": 0.5},
        {"feature": "screen_width", "value": None, "contribution": -0.125},
    ],
    "rest": 0.625,
}


def _warm(reasons: object) -> dict:
    return score_event(
        session_id=SESSION["session_id"],
        client_id=SESSION["client_id"],
        probability=0.2,
        model_version="v1",
        trigger="hit",
        hit_number=4,
        event_time=None,
        scored_at=utc_iso(0),
        calibration=("v1#2", 0.1),
        tier="warm",
        reasons=reasons,  # type: ignore[arg-type]
    )


def test_reasons_kept_as_their_json_give_back_the_published_json() -> None:
    # The worker keeps a Warm score's reasons as the JSON its event carries; the event
    # made again from the entry is the very same bytes, as is one made from the reasons.
    published = orjson.dumps(_warm(orjson.dumps(REASONS)))
    assert published == orjson.dumps(_warm(REASONS))
    for reasons in (orjson.dumps(REASONS), pack_reasons(orjson.dumps(REASONS)), REASONS):
        entry = history_entry(0.2, "v1", None, 0, ("v1#2", 0.1), 1, reasons)
        again = score_from_history(
            SESSION["session_id"], SESSION["client_id"], None, "hit:4", entry
        )
        assert again == published
        assert orjson.loads(again)["reasons"] == REASONS


def test_an_entry_with_reasons_in_the_earlier_list_form_still_reads() -> None:
    top = [[r["feature"], r["value"], r["contribution"]] for r in REASONS["top"]]
    old = msgpack.packb([0.2, "v1", None, 0, "v1#2", 0.1, 1, [-1.5, -3.25, 0.625, top], None])
    again = score_from_history(SESSION["session_id"], SESSION["client_id"], None, "hit:4", old)
    assert again == orjson.dumps(_warm(REASONS))


@pytest.mark.parametrize(
    "value",
    [
        "banner",
        'a,"value":b',
        '{"feature":"x","value":1}',
        "\x01\x04\x07 control bytes",
        'back\\slash\\", "rest":',
        'ünïcødé ,"contribution":',
        None,
        -0.0,
        1e-6,
    ],
)
def test_packed_reasons_give_back_their_json_byte_for_byte(value: object) -> None:
    # An entry keeps the reasons' JSON with its fixed pieces as one byte each: whatever
    # the visitor's value (the site's own text), the JSON comes back the same.
    reasons = dict(REASONS, top=[dict(r, value=value) for r in REASONS["top"]])
    text = orjson.dumps(reasons)
    packed = pack_reasons(text)
    assert unpack_reasons(packed) == text
    assert orjson.loads(unpack_reasons(packed)) == reasons


def test_packed_reasons_take_about_half_their_json() -> None:
    text = orjson.dumps(REASONS)
    assert len(pack_reasons(text)) < 0.6 * len(text)
