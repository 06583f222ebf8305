"""Warm and Hot scores and their leads: made again from the compact history, byte for byte."""

from __future__ import annotations

import msgpack
import orjson
import pytest

from contracts.history import copies_from_history, history_entry, history_field
from contracts.keys import StoredRow
from contracts.leads import LeadEvent, lead_event, lead_id
from contracts.scores import ScoreEvent, score_event
from contracts.times import iso_from_ms, utc_iso

SID = "9055434745589932991.1637753792.1637753792"
CLIENT = "2108382700.1637753791"
VERSION = "20261128T191146Z-a7e59150"
START = "2021-11-24T14:36:32+03:00"
ROW = StoredRow(
    START,
    CLIENT,
    b"\0" * 8,
    1_637_753_792_000.0,
    ("banner", "ZpYIoDJMcFzVoPFsHGJL", "(none)", "mobile", "Moscow"),
)
REASONS = {
    "log_odds": -1.265054,
    "bias": -3.564779,
    "top": [
        {"feature": "te_utm_source", "value": "bByPQxmDaMXgpHeypKSM", "contribution": 0.738072},
        {"feature": "card_views", "value": 4.0, "contribution": 0.43229},
        {"feature": "screen_width", "value": None, "contribution": -0.1},
    ],
    "rest": 1.229353,
}


def _score(tier: str, hit_number: int | None, event_ms: float | None, reasons=REASONS) -> dict:  # type: ignore[no-untyped-def]
    return score_event(
        session_id=SID,
        client_id=CLIENT,
        probability=0.220105,
        model_version=VERSION,
        trigger="hit" if hit_number else "session_start",
        hit_number=hit_number,
        event_time=START if event_ms is None else iso_from_ms(event_ms),
        scored_at=utc_iso(1_764_357_116_645),
        calibration=("v#3", -0.25),
        tier=tier,
        reasons=reasons,
    )


@pytest.mark.parametrize(
    ("tier", "code", "hit_number", "lead_hits"),
    [("warm", 1, None, 0), ("hot", 2, 7, 6), ("hot", 2, 9, None), ("warm", 1, 3, None)],
)
def test_a_warm_or_hot_entry_gives_back_its_score_and_lead(
    tier: str, code: int, hit_number: int | None, lead_hits: int | None
) -> None:
    event_ms = None if hit_number is None else 1_637_753_800_000.5
    score = _score(tier, hit_number, event_ms)
    entry = history_entry(
        0.220105,
        VERSION,
        True if event_ms is None else event_ms,
        1_764_357_116_645,
        ("v#3", -0.25),
        code,
        REASONS,
        lead_hits,
    )
    assert len(entry) < 1024  # a listpack value in the stack's Redis
    name = history_field(score["trigger"], hit_number)
    again, lead = copies_from_history(SID, ROW, name, entry)
    assert again == orjson.dumps(score)
    ScoreEvent.model_validate_json(again)
    if lead_hits is None:
        assert lead is None
        return
    assert lead == orjson.dumps(lead_event(score, ROW.channel, lead_hits))
    event = LeadEvent.model_validate_json(lead)
    assert event.tier == tier and event.hits == lead_hits
    assert event.lead_id == lead_id(SID, tier, VERSION)
    assert (event.utm_medium, event.utm_source, event.device_category, event.geo_city) == (
        "banner",
        "ZpYIoDJMcFzVoPFsHGJL",
        "mobile",
        "Moscow",
    )
    assert event.score_id == score["score_id"] and event.created_at == score["scored_at"]
    assert event.reasons is not None and event.reasons.top[1].value == 4.0


def test_a_cold_entry_stays_small_and_says_cold() -> None:
    entry = history_entry(0.01, VERSION, None, 0)
    assert len(msgpack.unpackb(entry)) == 4 and len(entry) < 64
    score, lead = copies_from_history(SID, ROW, "hit:2", entry)
    assert orjson.loads(score)["tier"] == "cold" and "reasons" not in orjson.loads(score)
    assert lead is None


def test_a_lead_is_not_made_again_without_the_sessions_row() -> None:
    entry = history_entry(0.3, VERSION, None, 0, tier=2, reasons=REASONS, lead_hits=3)
    score, lead = copies_from_history(SID, None, "hit:3", entry)
    assert orjson.loads(score)["tier"] == "hot" and lead is None


def test_lead_ids_differ_by_session_tier_and_version_only() -> None:
    ids = {
        lead_id(SID, "warm", VERSION),
        lead_id(SID, "hot", VERSION),
        lead_id(SID + "x", "warm", VERSION),
        lead_id(SID, "warm", VERSION + "x"),
    }
    assert len(ids) == 4
    assert lead_id(SID, "warm", VERSION) == lead_id(SID, "warm", VERSION)


def test_a_score_event_without_reasons_still_validates() -> None:
    event = ScoreEvent.model_validate(_score("cold", 2, 1.0, reasons=None))
    assert event.tier == "cold" and event.reasons is None
    with pytest.raises(ValueError):
        ScoreEvent.model_validate(dict(_score("cold", 2, 1.0), tier="lukewarm"))
