"""The score event published on ``conversion.scores``."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel

Trigger = Literal["session_start", "hit", "session_end"]

_SCORE_NAMESPACE = uuid.UUID("6f1c1f0e-5b0a-4f57-9a39-2f3c6d0b7a11")


def score_id(session_id: str, trigger: str, hit_number: int | None, model_version: str) -> str:
    """Return the deterministic id of a score, so a re-published copy is recognisable."""
    key = f"{session_id}|{trigger}|{'' if hit_number is None else hit_number}|{model_version}"
    return str(uuid.uuid5(_SCORE_NAMESPACE, key))


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
