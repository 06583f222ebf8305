"""A session's score history in Redis: each score in compact form, keyed by trigger.

The JSON of a score is made again from its entry, byte for byte, so a redelivered event
publishes the very same copy, and the API shows the same scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack
import orjson

from contracts.calibrations import OFFLINE
from contracts.keys import StoredRow, unpack_row
from contracts.leads import lead_event
from contracts.scores import TIER_NAMES, score_event
from contracts.times import iso_from_ms, utc_iso

# A score in a session's history hash is kept as MessagePack of [probability, model
# version, event time, scored_at in epoch ms]: about 55 bytes where its JSON takes 340,
# small enough for Redis to keep a session's history as one compact listpack. The event
# time is its epoch ms (a hit's or a close's, formatted by ``iso_from_ms``), None (no
# event time), or true: the session's start, as stored in its state hash. The JSON is
# made again from it, byte for byte, with what the state hash holds. A Warm or Hot
# score keeps five more items: its calibration (id, shift), its tier, its reasons as the
# JSON its event carries, packed (``pack_reasons``), and, if it made a lead, the session's
# hits when it did (else None). Entries written before kept the reasons as a list
# (``_reasons``).

# The fixed pieces of a reasons' JSON (``contracts.scores.Reasons``, as orjson writes it).
LOG_ODDS, BIAS, TOP = b'{"log_odds":', b',"bias":', b',"top":['
FEATURE, VALUE, CONTRIBUTION, REST = b'{"feature":', b',"value":', b',"contribution":', b',"rest":'
# Each is kept in a history entry as one control byte: orjson writes none of these bytes
# (it escapes them in strings), and none of the pieces can occur inside a string (a quote
# there is escaped). The JSON of five reasons, about 430 bytes, is kept in about 215.
PACKED = {
    piece: bytes([code])
    for code, piece in enumerate((LOG_ODDS, BIAS, TOP, FEATURE, VALUE, CONTRIBUTION, REST), 1)
}


def pack_reasons(reasons_json: bytes) -> bytes:
    """A reasons' JSON as a history entry keeps it: each fixed piece as its byte. (The
    worker writes this form along with the JSON: ``artifact.explain``.)"""
    for piece, byte in PACKED.items():
        reasons_json = reasons_json.replace(piece, byte)
    return reasons_json


def unpack_reasons(packed: bytes) -> bytes:
    """The reasons' JSON, byte for byte, from what ``pack_reasons`` made of it (a JSON
    not packed comes back as it is)."""
    for piece, byte in PACKED.items():
        packed = packed.replace(byte, piece)
    return packed


def _reasons(compact: list[Any]) -> dict[str, Any]:
    """Reasons as entries kept them before: [log_odds, bias, rest, [[feature, value,
    contribution], ...]]."""
    log_odds, bias, rest, top = compact
    return {
        "log_odds": log_odds,
        "bias": bias,
        "top": [{"feature": f, "value": v, "contribution": c} for f, v, c in top],
        "rest": rest,
    }


def history_entry(
    probability: float,
    model_version: str,
    event: float | bool | None,
    scored_ms: int,
    calibration: tuple[str, float] = (OFFLINE, 0.0),
    tier: int = 0,
    reasons: Mapping[str, Any] | bytes | None = None,
    lead_hits: int | None = None,
) -> bytes:
    """Return a score's compact form for the session's history hash.

    A score made with an online calibration keeps its id and shift as two more items;
    one made with the offline calibration keeps the four. A Warm or Hot one keeps its
    tier, reasons and lead too (``lead_hits``: the hits so far, if the score made a lead).
    The reasons are kept as their JSON, packed (``pack_reasons``): given as the reasons,
    or as that JSON, packed already or not.
    """
    item: list[object] = [float(probability), model_version, event, scored_ms]
    if calibration[0] != OFFLINE or tier:
        item += [calibration[0], float(calibration[1])]
    if tier:
        if reasons is not None and not isinstance(reasons, bytes):
            reasons = pack_reasons(orjson.dumps(reasons))
        item += [tier, reasons, lead_hits]
    return msgpack.packb(item)


def _json_reasons(packed: bytes | None) -> bytes | None:
    """The reasons' JSON of an entry's packed reasons (None: it has none)."""
    return None if packed is None else unpack_reasons(packed)


def _score(
    session_id: str, client_id: str | None, start: str | None, name: str, entry: bytes
) -> tuple[dict[str, Any], int | None]:
    """The ScoreEvent of a compact history entry, and the hits of the lead it made (None:
    it made none)."""
    probability, version, event, scored_ms, *more = msgpack.unpackb(entry)
    calibration = (str(more[0]), float(more[1])) if len(more) >= 2 else (OFFLINE, 0.0)
    tier, reasons, lead_hits = (more[2], more[3], more[4]) if len(more) >= 5 else (0, None, None)
    trigger, _, number = name.partition(":")
    event_time: str | None = None
    if event is True:
        event_time = start
    elif event is not None:
        event_time = iso_from_ms(event)
    score = score_event(
        session_id=session_id,
        client_id=client_id,
        probability=probability,
        model_version=version,
        trigger=trigger,
        hit_number=int(number) if number else None,
        event_time=event_time,
        scored_at=utc_iso(scored_ms),
        calibration=calibration,
        tier=TIER_NAMES[tier],
        reasons=_reasons(reasons) if isinstance(reasons, list) else _json_reasons(reasons),
    )
    return score, lead_hits


def score_from_history(
    session_id: str, client_id: str | None, start: str | None, name: str, entry: bytes
) -> bytes:
    """Return the ScoreEvent JSON of a history entry (``name`` is its history field).

    ``client_id`` and ``start`` are the session's, from its state hash. An entry kept as
    JSON (as histories were before the compact form) comes back as it is.
    """
    if entry[:1] == b"{":
        return entry
    return orjson.dumps(_score(session_id, client_id, start, name, entry)[0])


def copies_from_history(
    session_id: str, row: StoredRow | None, name: str, entry: bytes
) -> tuple[bytes, bytes | None]:
    """Return the ScoreEvent JSON of a history entry, and the LeadEvent JSON of the lead
    it made (None if it made none), both the very bytes published the first time.

    ``row`` is what the session's state hash holds of its row (None: it is gone, and
    so is a lead's channel: no lead is made again without it).
    """
    client_id = None if row is None else row.client_id
    start = None if row is None else row.start
    if entry[:1] == b"{":
        return entry, None
    score, lead_hits = _score(session_id, client_id, start, name, entry)
    lead = None
    if lead_hits is not None and row is not None:
        lead = orjson.dumps(lead_event(score, row.channel, lead_hits))
    return orjson.dumps(score), lead


def latest_from_hash(
    session_id: str, latest: bytes | None, entry: bytes | None, row: bytes | None
) -> bytes | None:
    """Return a session's latest ScoreEvent JSON from its hash: the ``latest`` field
    (the name of that score's history field), that field's entry and the packed row.

    A ``latest`` kept as JSON (as hashes were before) comes back as it is; None where
    the session has no latest score, or its entry is gone.
    """
    if not latest:
        return None
    if latest[:1] == b"{":
        return latest
    if not entry:
        return None
    stored = unpack_row(row) if row else None
    client_id = None if stored is None else stored.client_id
    start = None if stored is None else stored.start
    return score_from_history(session_id, client_id, start, latest.decode(), entry)


def history_field(trigger: str, hit_number: int | None) -> str:
    """Name a score's field in the session's score history."""
    return f"{trigger}:{'' if hit_number is None else hit_number}"


_TRIGGER_ORDER = {"session_start": 0, "hit": 1, "session_end": 2}


def trajectory(history: Mapping[bytes, bytes], limit: int) -> list[float]:
    """Return the probabilities of a session's scores in session order, the last ``limit``.

    ``history`` is its history hash as Redis returns it (field and entry as bytes): the
    start, the hits by number, the close. An entry kept as JSON gives its probability too.
    """
    points: list[tuple[int, int, float]] = []
    for name, entry in history.items():
        trigger, _, number = name.decode().partition(":")
        try:
            if entry[:1] == b"{":
                probability = float(orjson.loads(entry)["probability"])
            else:
                probability = float(msgpack.unpackb(entry)[0])
            order = (_TRIGGER_ORDER.get(trigger, 1), int(number or 0))
        except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException):
            continue  # not a score this code can read: the sparkline goes without it
        points.append((*order, probability))
    points.sort()
    return [p for _, _, p in points[-limit:]] if limit > 0 else []
