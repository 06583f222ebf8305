"""The online calibration record published on ``conversion.calibrations``.

One record per change of a model version's online calibration, keyed by the model
version, on a topic of one partition: the latest record of a version is the calibration
its scores get, in the worker and in the API. ``shift`` is added to the log-odds of both
of its models after their offline calibration; ``calibration_id`` (``version#seq``) is
what every score it makes names. ``python -m stream quality`` estimates and publishes
them (``stream.recalibration``); ``python -m stream calibration`` pauses, resumes and
rolls them back.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field, ValidationError, field_validator

# No online calibration may move a model's log-odds further than this: beyond it the
# model is wrong, not drifted, and needs retraining (the alert fires well before).
MAX_ABS_SHIFT = 2.0
MODEL_VERSION_MAX = 200  # characters; versions are a timestamp and a digest prefix

# The id of a model's own calibration, before any online shift.
OFFLINE = "offline"

State = Literal["active", "paused"]
Reason = Literal["estimate", "pause", "resume", "rollback"]


def calibration_id(model_version: str, seq: int) -> str:
    """The id a score names: the model version and the record's sequence number."""
    return f"{model_version}#{seq}"


class CalibrationRecord(BaseModel):
    """A model version's online calibration from now on."""

    model_version: str = Field(min_length=1, max_length=MODEL_VERSION_MAX)
    seq: int = Field(ge=1)
    calibration_id: str
    shift: float = Field(ge=-MAX_ABS_SHIFT, le=MAX_ABS_SHIFT)
    state: State
    reason: Reason
    outcomes: int = Field(ge=0)  # sessions with an outcome in the estimate's window
    conversions: int = Field(ge=0)
    target_shift: float | None = None  # the window's estimate, before the step bound
    window_from: str | None = None  # event times of the window's first and last outcome
    window_to: str | None = None
    decided_at: str

    @field_validator("shift")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("shift must be finite")
        return v

    def model_post_init(self, context: Any) -> None:
        if self.calibration_id != calibration_id(self.model_version, self.seq):
            raise ValueError(
                f"calibration_id {self.calibration_id!r} is not "
                f"{calibration_id(self.model_version, self.seq)!r}"
            )


def parse_record(value: bytes | None) -> CalibrationRecord:
    """Parse a record's value; ValueError with the reason when it is not a valid record."""
    if value is None:
        raise ValueError("empty record")
    try:
        return CalibrationRecord.model_validate(orjson.loads(value))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise ValueError(f"not a calibration record: {exc}") from None
