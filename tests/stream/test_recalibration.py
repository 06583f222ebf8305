"""Online recalibration: the estimator's guard rails, the follower, the operator's records."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from contracts.calibrations import MAX_ABS_SHIFT, OFFLINE, CalibrationRecord, parse_record
from stream.calibration_follow import CalibrationFollower
from stream.calibration_ops import CalibrationCommandError, next_record
from stream.calibration_topic import CalibrationCollector, CalibrationReader
from stream.metrics import WorkerMetrics
from stream.recalibration import RecalibrationRules, Recalibrator, make_record, offline_logit
from stream.settings import StreamSettings


@dataclass
class Seen:
    probability: float
    shift: float
    converted: bool
    event_time: str | None = "2021-11-20T10:00:00+00:00"


T0 = 1_637_400_000.0  # 2021-11-20


def at(seconds: float) -> str:
    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat()


RULES = RecalibrationRules(
    window=4000, min_outcomes=2000, min_conversions=40, every=500, max_step=0.1, deadband=0.01
)


def feed(
    recal: Recalibrator, n: int, rate_factor: float, seed: int = 0, shift: float = 0.0
) -> list[CalibrationRecord]:
    """n outcomes whose true rate is rate_factor x the scores' offline level."""
    rng = np.random.default_rng(seed)
    published = []
    start = max(recal.event_time - T0, 0.0)
    for i in range(n):
        base = float(rng.uniform(0.01, 0.06))
        z = math.log(base / (1 - base)) + shift
        p = 1 / (1 + math.exp(-z))
        seen = Seen(p, shift, bool(rng.random() < base * rate_factor), at(start + i))
        recal.observe("v1", seen)
        recal.saw_event_time(at(start + i + RULES.settle_s))  # the stream moved on: settled
        published += recal.due()
        shift = recal.versions["v1"].shift
    return published


def test_nothing_moves_before_the_window_holds_enough_outcomes() -> None:
    recal = Recalibrator(RULES)
    assert feed(recal, 1999, rate_factor=0.5) == []
    assert recal.versions["v1"].shift == 0.0


def test_the_shift_walks_to_the_drift_in_bounded_steps_and_stops_there() -> None:
    recal = Recalibrator(RULES)
    published = feed(recal, 20_000, rate_factor=0.57, seed=1)
    steps = np.diff([0.0] + [r.shift for r in published])
    assert len(published) >= 5
    assert np.all(np.abs(steps) <= RULES.max_step + 1e-9)
    assert [r.seq for r in published] == list(range(1, len(published) + 1))
    # the drift, in log-odds at these rates: about log(0.57)
    assert published[-1].shift == pytest.approx(math.log(0.57), abs=0.1)
    assert all(r.state == "active" and r.reason == "estimate" for r in published)
    assert published[-1].target_shift is not None and published[-1].outcomes == 4000


def test_scores_made_with_another_shift_count_at_their_offline_log_odds() -> None:
    recal = Recalibrator(RULES)
    # every score already made with shift -0.4; outcomes at the offline level: the
    # estimate is 0, not -0.4 lower again.
    feed(recal, 4000, rate_factor=1.0, seed=2, shift=-0.4)
    target, _, _ = recal.estimate("v1") or (None, 0, 0)
    assert target == pytest.approx(0.0, abs=0.12)
    assert offline_logit(0.5, 0.3) == pytest.approx(-0.3)


def test_an_outcome_counts_once_the_stream_is_past_its_sessions_close() -> None:
    recal = Recalibrator(RULES)
    recal.observe("v1", Seen(0.03, 0.0, True, at(0)))
    recal.observe("v1", Seen(0.03, 0.0, False, at(100)))
    recal.observe("v1", Seen(0.03, 0.0, False, None))  # no start time: not placed
    recal.saw_event_time(at(RULES.settle_s + 50))
    assert [o.converted for o in recal.versions["v1"].outcomes] == [True]
    recal.saw_event_time(at(10.0))  # event time does not go back
    recal.saw_event_time("2999-01-01T00:00:00+00:00")  # beyond any real event: ignored
    recal.saw_event_time("not a time")
    assert len(recal.versions["v1"].outcomes) == 1
    recal.saw_event_time(at(RULES.settle_s + 100))
    assert len(recal.versions["v1"].outcomes) == 2


def test_without_drift_the_shift_stays_within_the_estimates_noise() -> None:
    recal = Recalibrator(RULES)
    published = feed(recal, 12_000, rate_factor=1.0, seed=6)
    estimates = 12_000 // RULES.every - 1
    # no drift: the estimate wanders within its noise; a move needs more than that
    assert len(published) <= 2 < estimates
    assert abs(recal.versions["v1"].shift) <= RULES.max_step + 1e-9


def test_a_paused_version_keeps_its_shift_and_an_operator_record_wins() -> None:
    recal = Recalibrator(RULES)
    recal.on_record(make_record("v1", 3, -0.2, "paused", "pause"))
    assert feed(recal, 6000, rate_factor=0.5, seed=3) == []
    assert recal.versions["v1"].shift == -0.2 and recal.versions["v1"].target is not None
    recal.on_record(make_record("v1", 4, -0.2, "active", "resume"))
    published = feed(recal, 1000, rate_factor=0.5, seed=4)
    assert published and published[0].seq == 5 and published[0].shift == pytest.approx(-0.3)
    last = published[-1].seq
    recal.on_record(make_record("v1", 2, 0.0, "active", "estimate"))  # older: ignored
    assert recal.versions["v1"].seq == last


def test_records_outside_their_bounds_are_refused() -> None:
    good = make_record("v1", 1, 0.1, "active", "estimate").model_dump()
    for change in (
        {"shift": MAX_ABS_SHIFT + 0.1},
        {"shift": float("nan")},
        {"seq": 0},
        {"calibration_id": "v1#9"},
        {"state": "gone"},
        {"model_version": ""},
    ):
        import orjson

        with pytest.raises(ValueError, match="not a calibration record"):
            parse_record(orjson.dumps({**good, **change}, option=orjson.OPT_SERIALIZE_NUMPY))
    with pytest.raises(ValueError):
        parse_record(b"{not json")
    with pytest.raises(ValueError):
        parse_record(None)


def test_the_reader_keeps_the_latest_valid_record_per_version() -> None:
    reader = CalibrationReader(StreamSettings())
    import orjson

    a = orjson.dumps(make_record("v1", 1, -0.1, "active", "estimate").model_dump())
    b = orjson.dumps(make_record("v1", 2, -0.2, "active", "estimate").model_dump())
    c = orjson.dumps(make_record("v2", 1, 0.3, "paused", "pause").model_dump())
    new = reader.take([a, b"garbage", b, c, a])
    assert reader.skipped == 1
    assert reader.latest["v1"].seq == 2 and reader.latest["v2"].shift == 0.3
    assert [r.calibration_id for r in new] == ["v1#1", "v1#2", "v2#1"]
    assert len(reader.history) == 4


class FakeProcessor:
    def __init__(self, model: Any) -> None:
        self.model = model


def test_the_follower_applies_the_record_of_the_version_in_use(model_path: Any) -> None:
    from artifact import load_model

    model = load_model(model_path)
    processor = FakeProcessor(model)
    reader = CalibrationReader(StreamSettings())
    follower = CalibrationFollower(
        StreamSettings(),
        processor,
        WorkerMetrics(),
        reader,  # type: ignore[arg-type]
    )
    assert follower.apply() is False and processor.model is model
    x = np.random.default_rng(0).normal(size=(30, model.session_booster.num_features()))
    before = model.score_session_vectors(x)
    reader.latest[model.version] = make_record(model.version, 1, -0.5, "active", "estimate")
    reader.latest["another"] = make_record("another", 1, 1.0, "active", "estimate")
    assert follower.apply() is True
    shifted = processor.model
    assert shifted.calibration_id == f"{model.version}#1" and shifted.calibration_shift == -0.5
    after = shifted.score_session_vectors(x)
    assert (after < before).all()
    assert (np.argsort(after) == np.argsort(before)).all()  # the order stays
    logit = np.log(after / (1 - after)) - np.log(before / (1 - before))
    np.testing.assert_allclose(logit, -0.5, atol=1e-6)
    assert follower.apply() is False
    # A reload swaps in a new artifact of the same version: the record applies to it too.
    processor.model = load_model(model_path)
    assert follower.apply() is True and processor.model.calibration_shift == -0.5
    # A rollback to offline.
    reader.latest[model.version] = make_record(model.version, 2, 0.0, "paused", "rollback")
    assert follower.apply() is True
    np.testing.assert_allclose(processor.model.score_session_vectors(x), before, rtol=1e-9)
    assert processor.model.calibration_id == f"{model.version}#2"
    assert OFFLINE == "offline"


def test_operator_records_pause_resume_and_roll_back() -> None:
    history = [
        make_record("v1", 1, -0.1, "active", "estimate"),
        make_record("v1", 2, -0.2, "active", "estimate"),
        make_record("v2", 1, 0.4, "active", "estimate"),
    ]
    pause = next_record(history, "v1", "pause")
    assert (pause.seq, pause.shift, pause.state) == (3, -0.2, "paused")
    resume = next_record([*history, pause], "v1", "resume")
    assert (resume.seq, resume.shift, resume.state) == (4, -0.2, "active")
    back = next_record(history, "v1", "rollback", "1")
    assert (back.seq, back.shift, back.state, back.reason) == (3, -0.1, "paused", "rollback")
    assert next_record(history, "v1", "rollback", "offline").shift == 0.0
    assert next_record([], "v9", "pause").seq == 1
    with pytest.raises(CalibrationCommandError, match="no calibration 7"):
        next_record(history, "v1", "rollback", "7")
    with pytest.raises(CalibrationCommandError, match="needs --to"):
        next_record(history, "v1", "rollback")


def test_the_metrics_show_each_versions_calibration() -> None:
    recal = Recalibrator(RULES)
    feed(recal, 3000, rate_factor=0.5, seed=5)
    recal.on_record(make_record("v0", 2, 0.7, "paused", "pause"))
    families = {f.name: f for f in CalibrationCollector(recal).collect()}
    shift = {
        s.labels["model_version"]: s.value for s in families["scorer_calibration_shift"].samples
    }
    assert shift["v0"] == 0.7 and shift["v1"] < 0
    paused = {
        s.labels["model_version"]: s.value for s in families["scorer_calibration_paused"].samples
    }
    assert paused == {"v0": 1.0, "v1": 0.0}


def test_scoring_waits_for_the_topic_at_start_but_not_for_ever(
    model_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from artifact import load_model
    from stream import calibration_follow

    processor = FakeProcessor(load_model(model_path))
    off = CalibrationFollower(
        StreamSettings(calibration_follow_s=0),
        processor,
        WorkerMetrics(),  # type: ignore[arg-type]
    )
    assert off.ready.is_set()  # not following: nothing to wait for
    on = CalibrationFollower(StreamSettings(), processor, WorkerMetrics())  # type: ignore[arg-type]
    assert not on.ready.is_set()
    monkeypatch.setattr(calibration_follow, "CATCH_UP_S", -4.9)  # a bound of 0.1 s
    asyncio.run(on.wait_ready())
    assert on.ready.is_set()


def test_outcomes_settling_all_at_once_move_the_shift_as_a_slow_stream_does() -> None:
    """A replay at full speed: the same outcomes, read in one burst, give the same records."""
    slow = Recalibrator(RULES)
    published = feed(slow, 6000, rate_factor=0.57, seed=7)
    burst = Recalibrator(RULES)
    rng = np.random.default_rng(7)
    for i in range(6000):
        base = float(rng.uniform(0.01, 0.06))
        p = base  # scores made before any record: no shift
        outcome = Seen(p, 0.0, bool(rng.random() < base * 0.57), at(i))
        burst.observe("v1", outcome)
    burst.saw_event_time(at(6000 + RULES.settle_s))
    at_once = burst.due()
    assert len(at_once) >= 4
    # the first records agree (in the slow stream later scores carry the shift in use,
    # which the estimate takes off again: the same offline log-odds)
    for a, b in zip(published[:4], at_once[:4], strict=True):
        assert a.seq == b.seq and a.shift == pytest.approx(b.shift, abs=1e-6)
