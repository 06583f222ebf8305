"""Score events: deterministic ids, the contract's shape."""

import uuid

import pytest

from contracts.scores import _SCORE_NAMESPACE, ScoreEvent, score_event, score_id


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


@pytest.mark.parametrize(
    "args",
    [
        ("s1", "hit", 3, "v1"),
        ("905.1629726000.1629726000", "session_start", None, "20211124T000000Z-ab12"),
        ("é", "session_end", None, ""),
    ],
)
def test_score_ids_are_the_uuid5_of_their_fields(args) -> None:
    sid, trigger, hit, version = args
    name = f"{sid}|{trigger}|{'' if hit is None else hit}|{version}"
    assert score_id(*args) == str(uuid.uuid5(_SCORE_NAMESPACE, name))
