"""Request and response bodies of the API."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, time
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, NotRequired, Required

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from typing_extensions import TypedDict

from contracts.calibrations import OFFLINE
from contracts.limits import ID_MAX_CHARS, ID_PATTERN
from contracts.scores import Reasons, Tier

RESOLUTION = re.compile(r"^\d{1,5}x\d{1,5}$")

EXAMPLE_ROW: dict[str, Any] = {
    "session_id": "9055434745589932991.1637753792.1637753792",
    "client_id": "2108382700.1637753791",
    "visit_date": "2021-11-24",
    "visit_time": "14:36:32",
    "visit_number": 1,
    "utm_source": "ZpYIoDJMcFzVoPFsHGJL",
    "utm_medium": "banner",
    "utm_campaign": "LEoPHuyFvzoNfnzGgfcd",
    "utm_adcontent": "vCIpmpaGBnIQhyYNkXqp",
    "utm_keyword": None,
    "device_category": "mobile",
    "device_os": "Android",
    "device_brand": "Huawei",
    "device_model": None,
    "device_screen_resolution": "360x720",
    "device_browser": "Chrome",
    "geo_country": "Russia",
    "geo_city": "Zlatoust",
}


def _iso_check(parse: Callable[[str], object], length: int) -> Callable[[str], bool]:
    """A cached test that a string parses (date or time) and has the expected length.

    Only strings of that length reach the cache, so it is bounded in bytes as well as in
    entries: a request's made-up values cannot fill it with large strings.
    """

    @lru_cache(maxsize=131_072)
    def valid(v: str) -> bool:
        try:
            parse(v)
        except ValueError:
            return False
        return True

    return lambda v: len(v) == length and valid(v)


# A batch repeats few dates and resolutions: each distinct value is checked once.
_is_date = _iso_check(date.fromisoformat, 10)
_is_time = _iso_check(time.fromisoformat, 8)


@lru_cache(maxsize=65_536)
def _is_resolution(v: str) -> bool:
    return v == "(not set)" or RESOLUTION.match(v) is not None


def _check_date(v: str) -> str:
    if not _is_date(v):
        raise ValueError("visit_date must be a date as YYYY-MM-DD")
    return v


def _check_time(v: str) -> str:
    if not _is_time(v):
        raise ValueError("visit_time must be a time as HH:MM:SS")
    return v


def _not_a_boolean(v: Any) -> Any:
    # JSON's true would pass as 1: a boolean is no count. "7", as CSV exports send it, is.
    if isinstance(v, bool):
        raise ValueError("visit_number must be a whole number, not true or false")
    return v


def _check_resolution(v: str | None) -> str | None:
    if v is None or _is_resolution(v):
        return v
    raise ValueError("device_screen_resolution must be WIDTHxHEIGHT (e.g. 414x896) or (not set)")


class SessionRow(BaseModel):
    """One ga_sessions row, with the CSV's column names; null where the CSV is empty."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_ROW]})

    session_id: str = Field(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)
    client_id: str | None = Field(default=None, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)
    visit_date: Annotated[str, AfterValidator(_check_date)]
    visit_time: Annotated[str, AfterValidator(_check_time)]
    visit_number: Annotated[int, BeforeValidator(_not_a_boolean), Field(ge=1, le=100_000)]
    utm_source: str | None = Field(default=None, max_length=200)
    utm_medium: str | None = Field(default=None, max_length=200)
    utm_campaign: str | None = Field(default=None, max_length=200)
    utm_adcontent: str | None = Field(default=None, max_length=200)
    utm_keyword: str | None = Field(default=None, max_length=200)
    device_category: str | None = Field(default=None, max_length=50)
    device_os: str | None = Field(default=None, max_length=100)
    device_brand: str | None = Field(default=None, max_length=100)
    device_model: str | None = Field(default=None, max_length=200)
    device_screen_resolution: Annotated[
        str | None, Field(default=None, max_length=50), AfterValidator(_check_resolution)
    ]
    device_browser: str | None = Field(default=None, max_length=100)
    geo_country: str | None = Field(default=None, max_length=100)
    geo_city: str | None = Field(default=None, max_length=100)


def _as_typed_dict(model: type[BaseModel]) -> Any:
    """The same fields and checks as a TypedDict: validated rows stay plain dicts.

    Validating 10,000 rows into dicts costs about half of building 10,000 models, and a
    batch only needs the values. Fields with a default may be left out.
    """
    fields = {}
    for name, info in model.model_fields.items():
        annotation = info.rebuild_annotation()
        fields[name] = Required[annotation] if info.is_required() else NotRequired[annotation]
    typed = TypedDict(f"{model.__name__}Fields", fields)  # type: ignore[misc]
    typed.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return typed


if TYPE_CHECKING:
    SessionRowFields = dict[str, Any]
else:
    SessionRowFields = _as_typed_dict(SessionRow)


TIER_TEXT = (
    "Hot / Warm / Cold, for the sales team's call list: the probability against the "
    "model's thresholds (Hot: the top 1 % of recent session starts, Warm: the next 4 %), "
    "judged without the online shift; always cold for a model without thresholds"
)
REASONS_TEXT = (
    "why the score is what it is: bias + the contributions of top + rest (the other "
    "features' sum) = log_odds, the logit of the probability; each reason names a feature "
    "(as docs/features.md does), the visitor's value and its signed share of the log-odds"
)


class PredictResponse(BaseModel):
    """The session-start conversion probability of one row, with its tier; its reasons
    only when asked for (``explain=true``)."""

    session_id: str
    probability: float
    model_version: str
    calibration_id: str = Field(
        default=OFFLINE, description="the online calibration that made it (offline: as shipped)"
    )
    tier: Tier = Field(default="cold", description=TIER_TEXT)
    reasons: Reasons | None = Field(
        default=None, description=f"only with explain=true: {REASONS_TEXT}"
    )


class BatchRequest(BaseModel):
    """Many rows to score at once."""

    model_config = ConfigDict(extra="forbid")

    rows: list[SessionRowFields] = Field(min_length=1)


class BatchResponse(BaseModel):
    """Probabilities in the order of the request's rows."""

    model_version: str
    calibration_id: str = OFFLINE
    predictions: list[PredictResponse]


class ScoreResponse(BaseModel):
    """A score the stream published for a session, as it published it, with its age."""

    score_id: str
    session_id: str
    client_id: str | None
    probability: float
    model_version: str
    trigger: str
    hit_number: int | None
    event_time: str | None
    scored_at: str
    calibration_id: str = OFFLINE
    calibration_shift: float = 0.0
    age_s: float
    tier: Tier = Field(default="cold", description=TIER_TEXT)
    reasons: Reasons | None = Field(
        default=None,
        description="present when the stream published them (warm and hot scores) or when "
        f"asked for (explain=true; null then if they cannot be given): {REASONS_TEXT}",
    )

    # No return annotation: with one, pydantic would document the answer as that type
    # instead of these fields.
    @model_serializer(mode="wrap")
    def _leave_out_absent_reasons(self, handler: SerializerFunctionWrapHandler):
        """A score without reasons has no ``reasons`` key (as the stream's JSON), unless
        they were asked for and could not be given: then null, with why."""
        out = handler(self)
        if out.get("reasons_unavailable", None) is None:
            out.pop("reasons_unavailable", None)
            if out.get("reasons", None) is None:
                out.pop("reasons", None)
        return out


class LatestScoreResponse(ScoreResponse):
    """A session's latest score from the stream; with ``explain=true``, its reasons."""

    reasons_unavailable: str | None = Field(
        default=None,
        description="only with explain=true when reasons is null: why the score cannot "
        "be explained (e.g. it was made by another model version than the API serves)",
    )


class HealthResponse(BaseModel):
    """Liveness, with the model being served."""

    status: str
    model_version: str


class ReadyResponse(BaseModel):
    """Readiness: the model is loaded and Redis answers."""

    status: str
    model_version: str | None
    checks: dict[str, str]


class SessionStateResponse(BaseModel):
    """What the stream knows of a session: its state and its recent scores."""

    session_id: str
    client_id: str | None
    start: str | None
    ready: bool  # its session-start score is published and hits are being applied
    hits_applied: int
    pending_hits: int  # hits that arrived before the session row and wait for it
    state: dict[str, float]  # the hit-state counters (see docs/features.md)
    scores_total: int
    scores: list[ScoreResponse]  # the latest ones, oldest first
