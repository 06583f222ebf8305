"""The outcome event published on ``conversion.outcomes``."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel

Outcome = Literal["converted", "not_converted"]

_OUTCOME_NAMESPACE = uuid.UUID("0b8e7c3a-2d6f-4c1e-9f5a-7e4d3c2b1a09")


def outcome_id(session_id: str, outcome: str) -> str:
    """Return the deterministic id of a session's outcome."""
    return str(uuid.uuid5(_OUTCOME_NAMESPACE, f"{session_id}|{outcome}"))


class OutcomeEvent(BaseModel):
    """A session's outcome once known, with the last score published before it.

    ``converted``: its first target hit was applied (``hit_number`` says which);
    ``not_converted``: no event for the inactivity gap, so the session was closed.
    """

    outcome_id: str
    session_id: str
    client_id: str | None
    outcome: Outcome
    reason: Literal["target_hit", "inactivity"]
    hit_number: int | None
    event_time: str | None
    last_score: dict[str, Any] | None  # the ScoreEvent published last before the outcome
    decided_at: str
