"""The score event published on ``conversion.scores``."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from contracts.calibrations import OFFLINE
from contracts.times import now_iso

Trigger = Literal["session_start", "hit", "session_end"]
Tier = Literal["cold", "warm", "hot"]
TIER_NAMES: tuple[str, ...] = ("cold", "warm", "hot")  # by tier code (artifact.tiers)

_SCORE_NAMESPACE = uuid.UUID("6f1c1f0e-5b0a-4f57-9a39-2f3c6d0b7a11")
_NAMESPACE_BYTES = _SCORE_NAMESPACE.bytes


def score_id(session_id: str, trigger: str, hit_number: int | None, model_version: str) -> str:
    """Return the deterministic id of a score: a UUID5 of its identifying fields.

    Computed with hashlib directly (the same value as ``uuid.uuid5``, several times
    faster): the worker makes one for every event.
    """
    name = f"{session_id}|{trigger}|{'' if hit_number is None else hit_number}|{model_version}"
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


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
    calibration: tuple[str, float] = (OFFLINE, 0.0),
    tier: str = "cold",
    reasons: dict[str, Any] | bytes | None = None,
) -> dict[str, Any]:
    """Build the score event published on conversion.scores.

    ``scored_at`` defaults to now; a batch passes one for all its scores.
    ``calibration`` is the online calibration that made it: its id and its shift in
    log-odds (``contracts.calibrations``; the offline one shifts nothing). ``tier`` is
    its Hot / Warm / Cold tier (``artifact.tiers``); ``reasons``, given for Warm and Hot
    scores only, its top contributions (``artifact.explain.explain_rows``), or their JSON
    (``explain_rows_json``), which goes into the event's JSON as it is.
    """
    event: dict[str, Any] = {
        "score_id": score_id(session_id, trigger, hit_number, model_version),
        "session_id": session_id,
        "client_id": client_id,
        "probability": round(float(probability), 6),
        "model_version": model_version,
        "trigger": trigger,
        "hit_number": hit_number,
        "event_time": event_time,
        "scored_at": scored_at or now_iso(),
        "calibration_id": calibration[0],
        "calibration_shift": round(float(calibration[1]), 6),
        "tier": tier,
    }
    if reasons is not None:
        event["reasons"] = orjson.Fragment(reasons) if isinstance(reasons, bytes) else reasons
    return event


class Reason(BaseModel):
    """One feature's signed contribution to a score's log-odds, with the visitor's value
    (named as docs/features.md names the feature)."""

    feature: str
    value: float | str | None
    contribution: float


class Reasons(BaseModel):
    """A score's top contributions: bias + the contributions of ``top`` + ``rest`` (the
    other features' sum) = ``log_odds``, the score's log-odds."""

    log_odds: float
    bias: float
    top: list[Reason] = Field(max_length=64)
    rest: float


class ScoreEvent(BaseModel):
    """One conversion-likelihood score of a session."""

    score_id: str
    session_id: str
    client_id: str | None
    probability: float
    model_version: str
    trigger: Trigger
    hit_number: int | None
    event_time: str | None
    scored_at: str
    calibration_id: str = OFFLINE
    calibration_shift: float = 0.0
    tier: Tier = "cold"
    reasons: Reasons | None = None
