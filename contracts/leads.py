"""The lead event published on ``conversion.leads``: a session that just became Warm or Hot.

A session's tier (``artifact.tiers``) is set by each of its scores. The first score that
puts an open, unconverted session at Warm or above makes a lead of that tier; a later
score that puts it at Hot, when it was only Warm, makes a Hot lead. So a session makes
at most one lead per tier, and at most two in all (one jumping straight to Hot makes
only the Hot one); none once it converted or was closed. ``lead_id`` is a function of
the session, tier and model version: a copy published again after a crash has the same
id and the same bytes.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from contracts.scores import Reasons, Trigger

LeadTier = Literal["warm", "hot"]

_LEAD_NAMESPACE = uuid.UUID("3d0c5e52-8f41-4b7a-a6c9-1e2f7d4b9a60")


def lead_id(session_id: str, tier: str, model_version: str) -> str:
    """Return the deterministic id of a session's lead of a tier: a UUID5."""
    digest = bytearray(
        hashlib.sha1(
            _LEAD_NAMESPACE.bytes + f"{session_id}|{tier}|{model_version}".encode()
        ).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(digest)))


def lead_event(score: Mapping[str, Any], channel: Sequence[str], hits: int) -> dict[str, Any]:
    """Build the lead a score made, from the score event itself, the session's channel
    (utm_medium, utm_source, utm_campaign, device_category, geo_city, as the worker keeps
    them: ``stream.dashboard.channel_values``) and its hits so far."""
    medium, source, campaign, device, city = channel
    return {
        "lead_id": lead_id(score["session_id"], score["tier"], score["model_version"]),
        "session_id": score["session_id"],
        "client_id": score["client_id"],
        "tier": score["tier"],
        "probability": score["probability"],
        "model_version": score["model_version"],
        "score_id": score["score_id"],
        "trigger": score["trigger"],
        "hit_number": score["hit_number"],
        "hits": int(hits),
        "utm_source": source,
        "utm_medium": medium,
        "utm_campaign": campaign,
        "device_category": device,
        "geo_city": city,
        "reasons": score.get("reasons"),
        "event_time": score["event_time"],
        "created_at": score["scored_at"],
        "calibration_id": score["calibration_id"],
    }


class LeadEvent(BaseModel):
    """A session that just reached Warm or Hot, with why and where it came from."""

    lead_id: str
    session_id: str
    client_id: str | None
    tier: LeadTier
    probability: float
    model_version: str
    score_id: str  # the score that made it (conversion.scores)
    trigger: Trigger
    hit_number: int | None
    hits: int  # hits of the session applied so far (0 at its start)
    utm_source: str
    utm_medium: str
    utm_campaign: str
    device_category: str
    geo_city: str
    reasons: Reasons | None
    event_time: str | None
    created_at: str  # when its score was made (the score's scored_at)
    calibration_id: str
