"""What the worker does with one event, as plain functions of values."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgpack
import orjson

from contracts.outcomes import outcome_id
from contracts.scores import score_id
from features.columns import SESSION_COLUMNS

MSK = timezone(timedelta(hours=3))  # the site's visit_date/visit_time are Moscow time


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


def score_event(
    *,
    session_id: str,
    client_id: str | None,
    probability: float,
    model_version: str,
    trigger: str,
    hit_number: int | None,
    event_time: str | None,
    scored_at: str | None = None,
) -> dict[str, Any]:
    """Build the score event published on conversion.scores.

    ``scored_at`` defaults to now; a batch passes one for all its scores.
    """
    return {
        "score_id": score_id(session_id, trigger, hit_number, model_version),
        "session_id": session_id,
        "client_id": client_id,
        "probability": round(float(probability), 6),
        "model_version": model_version,
        "trigger": trigger,
        "hit_number": hit_number,
        "event_time": event_time,
        "scored_at": scored_at or now_iso(),
    }


def now_iso() -> str:
    """Return the time now, UTC, as an ISO timestamp to the millisecond."""
    return utc_iso(now_ms())


def now_ms() -> int:
    """Return the time now in whole milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def utc_iso(ms: int) -> str:
    """Return whole epoch milliseconds as a UTC ISO timestamp to the millisecond.

    The same text as ``datetime.now(UTC).isoformat(timespec="milliseconds")`` at that
    millisecond; a score's ``scored_at`` is made and kept this way.
    """
    second, milli = divmod(ms, 1000)
    text = datetime.fromtimestamp(second, UTC).isoformat()
    return f"{text[:19]}.{milli:03d}{text[19:]}"


# A score in a session's history hash is kept as MessagePack of [probability, model
# version, event time, scored_at in epoch ms]: about 55 bytes where its JSON takes 340,
# small enough for Redis to keep a session's history as one compact listpack. The event
# time is its epoch ms (a hit's or a close's, formatted by ``iso_from_ms``), None (no
# event time), or true: the session's start, as stored in its state hash. The JSON is
# made again from it, byte for byte, with what the state hash holds.
def history_entry(
    probability: float, model_version: str, event: float | bool | None, scored_ms: int
) -> bytes:
    """Return a score's compact form for the session's history hash."""
    return msgpack.packb([float(probability), model_version, event, scored_ms])


def score_from_history(
    session_id: str, client_id: str | None, start: str | None, name: str, entry: bytes
) -> bytes:
    """Return the ScoreEvent JSON of a history entry (``name`` is its history field).

    ``client_id`` and ``start`` are the session's, from its state hash. An entry kept as
    JSON (as histories were before the compact form) comes back as it is.
    """
    if entry[:1] == b"{":
        return entry
    probability, version, event, scored_ms = msgpack.unpackb(entry)
    trigger, _, number = name.partition(":")
    event_time: str | None = None
    if event is True:
        event_time = start
    elif event is not None:
        event_time = iso_from_ms(event)
    return orjson.dumps(
        score_event(
            session_id=session_id,
            client_id=client_id,
            probability=probability,
            model_version=version,
            trigger=trigger,
            hit_number=int(number) if number else None,
            event_time=event_time,
            scored_at=utc_iso(scored_ms),
        )
    )


def history_field(trigger: str, hit_number: int | None) -> str:
    """Name a score's field in the session's score history."""
    return f"{trigger}:{'' if hit_number is None else hit_number}"


def epoch_ms(iso: str) -> float:
    """Return an ISO timestamp with offset as milliseconds since the epoch."""
    return datetime.fromisoformat(iso).timestamp() * 1000.0


def hit_event_ms(start_ms: float, hit_time_ms: float | None) -> float:
    """Return a hit's event time in epoch ms: session start plus hit_time when known."""
    if hit_time_ms is None or not math.isfinite(hit_time_ms) or hit_time_ms < 0:
        return start_ms
    return start_ms + hit_time_ms


_MSK_OFFSET_S = 3 * 3600  # Moscow has kept UTC+3 all year since 2014
_EPOCH = datetime(1970, 1, 1)
_DATES: dict[int, str] = {}  # day number since the epoch, Moscow time -> its ISO date
_SECONDS: dict[int, str] = {}  # epoch second -> its ISO date and time, Moscow time


def iso_from_ms(ms: float) -> str:
    """Return epoch ms as an ISO timestamp in Moscow time, the site's clock.

    The same text as ``datetime.fromtimestamp(ms / 1000, MSK).isoformat(timespec=
    "milliseconds")``. The worker formats one for nearly every score: each second's
    date and time are made once, with integer arithmetic and one date per day
    (``datetime`` took several times as long).
    """
    second, micros = divmod(round(ms * 1000.0), 1_000_000)
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
            _DATES.clear()
        day, in_day = divmod(second + _MSK_OFFSET_S, 86_400)
        date = _DATES.get(day)
        if date is None:
            date = _DATES[day] = (_EPOCH + timedelta(days=day)).date().isoformat()
        hour, rest = divmod(in_day, 3600)
        text = _SECONDS[second] = f"{date}T{hour:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{text}.{micros // 1000:03d}+03:00"


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
