"""What the worker does with one event, as plain functions of values."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from contracts.outcomes import outcome_id
from contracts.times import MSK
from features.columns import SESSION_COLUMNS


class BadEvent(ValueError):
    """An event that cannot be processed; its message says why."""


def _decode(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise BadEvent("empty message value")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"value is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadEvent(f"value is a JSON {type(value).__name__}, not an object")
    return value


def _int(event: Mapping[str, Any], field: str) -> int:
    value = event.get(field)
    if isinstance(value, bool) or value is None:
        raise BadEvent(f"{field} is missing")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadEvent(f"{field} is not a number: {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise BadEvent(f"{field} is not a whole number: {value!r}")
    return int(number)


# The hit fields the worker reads: its session, its place and time in it, its action.
HIT_FIELDS: tuple[str, ...] = ("session_id", "hit_number", "hit_time", "event_action")


def _session_id(event: Mapping[str, Any]) -> str:
    sid = event.get("session_id")
    if not isinstance(sid, str) or not sid:
        raise BadEvent("session_id is missing or not a string")
    return sid


def parse_session(raw: bytes | None) -> dict[str, Any]:
    """Validate a ga.sessions event and return its 18 fields (None for empty)."""
    event = _decode(raw)
    _session_id(event)
    row = {c: event.get(c) for c in SESSION_COLUMNS}
    visit_number = _int(event, "visit_number")
    if visit_number < 1:
        raise BadEvent(f"visit_number must be at least 1, got {visit_number}")
    row["visit_number"] = visit_number
    for field in ("visit_date", "visit_time"):
        if not isinstance(row[field], str):
            raise BadEvent(f"{field} is missing or not a string")
    start_time(row)  # raises on a malformed date or time
    for c in SESSION_COLUMNS:
        value = row[c]
        if value is not None and c != "visit_number" and not isinstance(value, str):
            raise BadEvent(f"{c} must be a string or null, got {type(value).__name__}")
    return row


def parse_hit(raw: bytes | None) -> dict[str, Any]:
    """Validate a ga.hits event; return the fields the worker uses (HIT_FIELDS).

    The other columns of a hit (HIT_COLUMNS) feed no feature; they travel on in the
    record's original bytes (a parked hit, a dead letter).
    """
    event = _decode(raw)
    sid = _session_id(event)
    hit_number = _int(event, "hit_number")
    if hit_number < 1:
        raise BadEvent(f"hit_number must be at least 1, got {hit_number}")
    t = event.get("hit_time")
    if t is not None:
        try:
            t = float(t)
        except (TypeError, ValueError):
            raise BadEvent(f"hit_time is not a number: {t!r}") from None
    action = event.get("event_action")
    if action is not None and not isinstance(action, str):
        raise BadEvent("event_action must be a string or null")
    return {"session_id": sid, "hit_number": hit_number, "hit_time": t, "event_action": action}


def start_time(row: Mapping[str, Any]) -> datetime:
    """Return when a session started, from its Moscow-time visit_date and visit_time."""
    try:
        return datetime.fromisoformat(f"{row['visit_date']}T{row['visit_time']}").replace(
            tzinfo=MSK
        )
    except (TypeError, ValueError):
        raise BadEvent(
            f"visit_date/visit_time {row.get('visit_date')!r} {row.get('visit_time')!r} "
            "are not a date and a time"
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
