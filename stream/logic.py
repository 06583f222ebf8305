"""What the worker does with one event, as plain functions of values."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson

from contracts import limits
from contracts.limits import shown
from contracts.outcomes import outcome_id
from contracts.times import MSK
from features.columns import HIT_COLUMNS, SESSION_COLUMNS


class BadEvent(ValueError):
    """An event that cannot be processed; its message says why, ``kind`` in a word.

    The kinds (the label of the refusals metric): empty, too_large, not_json,
    not_object, missing, wrong_type, too_long, bad_id, out_of_bounds, bad_date.
    """

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message[: limits.ERROR_MAX_CHARS])
        self.kind = kind


def _decode(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        raise BadEvent("empty message value", "empty")
    if len(raw) > limits.RECORD_MAX_BYTES:
        raise BadEvent(
            f"record is {len(raw)} bytes, more than {limits.RECORD_MAX_BYTES}", "too_large"
        )
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"value is not JSON: {exc}", "not_json") from None
    if not isinstance(value, dict):
        raise BadEvent(f"value is a JSON {type(value).__name__}, not an object", "not_object")
    return value


def _int(event: Mapping[str, Any], field: str, high: int) -> int:
    """Return a whole number in 1..high (a CSV may send it as text or as 3.0)."""
    value = event.get(field)
    if isinstance(value, bool) or value is None:
        raise BadEvent(f"{field} is missing", "missing")
    if isinstance(value, str) and len(value) > 32:
        raise BadEvent(f"{field} is not a number: {shown(value)}", "wrong_type")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadEvent(f"{field} is not a number: {shown(value)}", "wrong_type") from None
    if not math.isfinite(number) or number != int(number):
        raise BadEvent(f"{field} is not a whole number: {shown(value)}", "wrong_type")
    if not 1 <= number <= high:
        kind = "out_of_bounds"
        if number < 1:
            raise BadEvent(f"{field} must be at least 1, got {shown(value)}", kind)
        raise BadEvent(f"{field} must be at most {high}, got {shown(value)}", kind)
    return int(number)


def _text_fields(event: Mapping[str, Any], columns: tuple[str, ...], max_chars: int) -> None:
    """Check that every string of the event is short enough and the columns are scalars."""
    for name, value in event.items():
        kind = type(value)
        if kind is str:
            if len(value) > max_chars:
                raise BadEvent(
                    f"{shown(name, 40)} is {len(value)} characters, more than {max_chars}",
                    "too_long",
                )
        elif (kind is list or kind is dict) and name in columns:
            raise BadEvent(f"{name} must be a string or null, got {shown(value)}", "wrong_type")


# The hit fields the worker reads: its session, its place and time in it, its action.
HIT_FIELDS: tuple[str, ...] = ("session_id", "hit_number", "hit_time", "event_action")


def _identifier(event: Mapping[str, Any], field: str, required: bool) -> str | None:
    value = event.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadEvent(f"{field} is missing or not a string", "missing")
    if len(value) > limits.ID_MAX_CHARS:
        raise BadEvent(
            f"{field} is {len(value)} characters, more than {limits.ID_MAX_CHARS}", "bad_id"
        )
    if not limits.ID_RE.match(value):
        raise BadEvent(
            f"{field} {shown(value)} has characters other than letters, digits and . _ : -",
            "bad_id",
        )
    return value


def _session_id(event: Mapping[str, Any]) -> str:
    return cast(str, _identifier(event, "session_id", required=True))


def _visit_date_time(row: Mapping[str, Any]) -> None:
    for field in ("visit_date", "visit_time"):
        if not isinstance(row[field], str):
            raise BadEvent(f"{field} is missing or not a string", "missing")
    day, clock = row["visit_date"], row["visit_time"]
    if len(day) != 10 or day[4] != "-" or day[7] != "-" or len(clock) != 8 or clock[2] != ":":
        raise BadEvent(
            f"visit_date/visit_time {shown(day, 20)} {shown(clock, 20)} "
            "are not a date and a time (YYYY-MM-DD HH:MM:SS)",
            "bad_date",
        )
    start = start_time(row).timestamp()  # raises on a malformed date or time
    if day < limits.VISIT_DATE_MIN:
        raise BadEvent(f"visit_date {day} is before {limits.VISIT_DATE_MIN}", "out_of_bounds")
    ahead = start - time.time()
    if ahead > limits.FUTURE_SLACK_S:
        raise BadEvent(
            f"visit {day} {clock} starts {ahead / 3600:.1f} h after the worker's clock "
            f"(at most {limits.FUTURE_SLACK_S / 3600:.0f} h ahead)",
            "out_of_bounds",
        )


def parse_session(raw: bytes | None) -> dict[str, Any]:
    """Validate a ga.sessions event and return its 18 fields (None for empty).

    Fields other than the 18 are dropped (the record's size bounds them).
    """
    event = _decode(raw)
    _session_id(event)
    _identifier(event, "client_id", required=False)
    row = {c: event.get(c) for c in SESSION_COLUMNS}
    most = limits.SESSION_FIELD_MAX_CHARS
    for c, value in row.items():
        if type(value) is str:
            if len(value) > most:
                raise BadEvent(f"{c} is {len(value)} characters, more than {most}", "too_long")
        elif value is not None and c != "visit_number":
            raise BadEvent(
                f"{c} must be a string or null, got {type(value).__name__}", "wrong_type"
            )
    row["visit_number"] = _int(event, "visit_number", limits.VISIT_NUMBER_MAX)
    _visit_date_time(row)
    return row


def parse_hit(raw: bytes | None) -> dict[str, Any]:
    """Validate a ga.hits event; return the fields the worker uses (HIT_FIELDS).

    The other columns of a hit (HIT_COLUMNS) feed no feature; they travel on in the
    record's original bytes (a parked hit, a dead letter), so only their size and kind
    are checked.
    """
    event = _decode(raw)
    sid = _session_id(event)
    _text_fields(event, HIT_COLUMNS, limits.HIT_FIELD_MAX_CHARS)
    hit_number = _int(event, "hit_number", limits.HIT_NUMBER_MAX)
    t = event.get("hit_time")
    if t is not None:
        if isinstance(t, bool) or (isinstance(t, str) and len(t) > 32):
            raise BadEvent(f"hit_time is not a number: {shown(t)}", "wrong_type")
        try:
            t = float(t)
        except (TypeError, ValueError):
            raise BadEvent(f"hit_time is not a number: {shown(t)}", "wrong_type") from None
        if math.isnan(t):
            t = None  # a CSV's empty cell, as pandas reads it
        elif not 0.0 <= t <= limits.HIT_TIME_MAX_MS:
            raise BadEvent(
                f"hit_time must be 0..{limits.HIT_TIME_MAX_MS:.0f} ms, got {shown(t)}",
                "out_of_bounds",
            )
    action = event.get("event_action")
    if action is not None and not isinstance(action, str):
        raise BadEvent("event_action must be a string or null", "wrong_type")
    return {"session_id": sid, "hit_number": hit_number, "hit_time": t, "event_action": action}


def start_time(row: Mapping[str, Any]) -> datetime:
    """Return when a session started, from its Moscow-time visit_date and visit_time."""
    try:
        return datetime.fromisoformat(f"{row['visit_date']}T{row['visit_time']}").replace(
            tzinfo=MSK
        )
    except (TypeError, ValueError):
        raise BadEvent(
            f"visit_date/visit_time {shown(row.get('visit_date'), 20)} "
            f"{shown(row.get('visit_time'), 20)} are not a date and a time",
            "bad_date",
        ) from None


def hit_time(session_start: str, hit_time_ms: float | None) -> str:
    """Return a hit's event time: the session start plus hit_time when known."""
    if hit_time_ms is None or not math.isfinite(hit_time_ms):
        return session_start
    start = datetime.fromisoformat(session_start)
    return (start + timedelta(milliseconds=hit_time_ms)).isoformat()


def epoch_ms(iso: str) -> float:
    """Return an ISO timestamp with offset as milliseconds since the epoch."""
    return datetime.fromisoformat(iso).timestamp() * 1000.0


def hit_event_ms(start_ms: float, hit_time_ms: float | None) -> float:
    """Return a hit's event time in epoch ms: session start plus hit_time when known."""
    if hit_time_ms is None or not math.isfinite(hit_time_ms) or hit_time_ms < 0:
        return start_ms
    return start_ms + hit_time_ms


def outcome_event(
    *,
    session_id: str,
    client_id: str | None,
    outcome: str,
    hit_number: int | None,
    event_time: str | None,
    last_score: bytes | None,
) -> dict[str, Any]:
    """Build the outcome event published on conversion.outcomes."""
    return {
        "outcome_id": outcome_id(session_id, outcome),
        "session_id": session_id,
        "client_id": client_id,
        "outcome": outcome,
        "reason": "target_hit" if outcome == "converted" else "inactivity",
        "hit_number": hit_number,
        "event_time": event_time,
        "last_score": None if last_score is None else orjson.loads(last_score),
        "decided_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
