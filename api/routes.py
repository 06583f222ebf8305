"""The API's routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader

from api import stored
from api.access import Access, header_bytes
from api.reasons import MAX_REASONS, explain_stored, prediction, score_columns
from api.schemas import (
    BatchRequest,
    BatchResponse,
    HealthResponse,
    LatestScoreResponse,
    PredictResponse,
    ReadyResponse,
    ScoreResponse,
    SessionRow,
    SessionStateResponse,
)
from api.settings import ApiSettings
from artifact import ConversionModel
from artifact.explain import EVENT_REASONS
from contracts import keys
from contracts.history import latest_from_hash, score_from_history
from contracts.limits import ID_MAX_CHARS, ID_PATTERN
from features.columns import SESSION_COLUMNS
from features.hits import STATE_NAMES, empty_state
from features.session import rows_to_columns

log = logging.getLogger(__name__)

HISTORY_LIMIT = 50  # scores shown by GET /sessions/{session_id}
# A session id as the worker accepts it (contracts.limits): anything else is a 422.
SessionId = Annotated[str, Path(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)]

_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ScoringKey",
    description="the scoring key (SCORER_API_KEY)",
)


# Dependencies are coroutines: FastAPI runs a plain function dependency in its thread
# pool, a thread hop for each one of every request.
async def _settings(request: Request) -> ApiSettings:
    return request.app.state.settings


async def _model(request: Request) -> ConversionModel:
    return request.app.state.model


async def _redis(request: Request) -> Any:
    return request.app.state.redis


async def _require_scoring_key(
    request: Request, key: Annotated[str | None, Security(_api_key_header)]
) -> None:
    access: Access = request.app.state.access
    access.require_scoring(header_bytes(key))


Settings = Annotated[ApiSettings, Depends(_settings)]
Model = Annotated[ConversionModel, Depends(_model)]
Redis = Annotated[Any, Depends(_redis)]
# Asking for a score's reasons, and how many of them.
Explain = Annotated[
    bool,
    Query(description="also answer with the score's reasons (its top contributions)"),
]
ReasonCount = Annotated[
    int,
    Query(
        ge=1,
        le=MAX_REASONS,
        description=f"how many reasons to list with explain=true (1 to {MAX_REASONS}); "
        "the others are summed in rest",
    ),
]


class _OrjsonRequest(Request):
    """A request whose JSON body is parsed by orjson (a 10,000-row batch is ~7 MB)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class _OrjsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_OrjsonRequest(request.scope, request.receive))

        return route


router = APIRouter(route_class=_OrjsonRoute)
protected = APIRouter(dependencies=[Depends(_require_scoring_key)], route_class=_OrjsonRoute)


@router.get("/health", response_model=HealthResponse)
async def health(model: Model) -> HealthResponse:
    """Say the process is up, with the model it serves."""
    return HealthResponse(status="ok", model_version=model.version)


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "not ready, with the reason"}},
)
async def ready(request: Request, response: Response, redis: Redis) -> ReadyResponse:
    """Say whether the API can serve: the model is loaded and Redis answers."""
    model = getattr(request.app.state, "model", None)
    checks = {"model": "loaded" if model is not None else "not loaded"}
    try:
        await asyncio.wait_for(redis.ping(), timeout=1.0)
        checks["redis"] = "ok"
    except Exception as exc:  # any failure to answer means not ready
        # Redis's own words (addresses, names) go to the log, not to whoever asked.
        log.warning("ready: Redis did not answer: %s: %s", type(exc).__name__, exc)
        checks["redis"] = "unreachable"
    ok = model is not None and checks["redis"] == "ok"
    response.status_code = 200 if ok else 503
    return ReadyResponse(
        status="ready" if ok else "not ready",
        model_version=None if model is None else model.version,
        checks=checks,
    )


@protected.post("/predict", response_model=PredictResponse)
async def predict(
    row: SessionRow,
    request: Request,
    explain: Explain = False,
    reasons: ReasonCount = EVENT_REASONS,
) -> Response:
    """Score one ga_sessions row at session start; with ``explain=true``, say why.

    (A valid request without a query string is answered by ``api/fastpath.py``, which
    writes the same bytes.)
    """
    # The model straight from the app's state: a dependency costs every request its solving.
    model: ConversionModel = request.app.state.model
    cols = rows_to_columns([row.__dict__], SESSION_COLUMNS)
    probs, tiers, explained = score_columns(model, cols, reasons if explain else None)
    request.app.state.metrics.rows_scored.inc()
    # Serialised here: the response model documents the shape, orjson writes it.
    answer = prediction(row.session_id, probs[0], model, tiers[0])
    if explained is not None:
        answer["reasons"] = explained[0]
    return Response(orjson.dumps(answer), media_type="application/json")


_ROW_FIELDS = tuple(SessionRow.model_fields)
_ALL_ABSENT = dict.fromkeys(_ROW_FIELDS)


def _columns(rows: list[dict[str, Any]]) -> dict[str, Sequence[Any]]:
    """Turn validated rows into columns: one transpose in C, not a lookup per value.

    Validation returns each row's fields in the schema's order; a row that left out
    optional fields gets them as None, in that order too.
    """
    if not rows:
        return {c: () for c in SESSION_COLUMNS}
    width = len(_ROW_FIELDS)
    full = [r if len(r) == width else {**_ALL_ABSENT, **r} for r in rows]
    values = zip(*(tuple(r.values()) for r in full), strict=True)
    by_field = dict(zip(_ROW_FIELDS, values, strict=True))
    return {c: by_field[c] for c in SESSION_COLUMNS}


@protected.post("/predict/batch", response_model=BatchResponse)
async def predict_batch(
    body: BatchRequest,
    request: Request,
    explain: Explain = False,
    reasons: ReasonCount = EVENT_REASONS,
) -> Response:
    """Score many ga_sessions rows at once; with ``explain=true``, each with its reasons."""
    model: ConversionModel = request.app.state.model
    settings: ApiSettings = request.app.state.settings
    if len(body.rows) > settings.max_batch_rows:
        raise HTTPException(
            status_code=413,
            detail=f"rows: at most {settings.max_batch_rows} "
            f"rows per request, got {len(body.rows)}",
        )
    cols = _columns(body.rows)
    if explain:
        # About 0.3 ms a row, mostly Python: a large batch is explained in a thread, so
        # that the event loop goes on answering other requests meanwhile.
        probs, tiers, explained = await asyncio.to_thread(score_columns, model, cols, reasons)
    else:
        probs, tiers, explained = score_columns(model, cols, None)
    request.app.state.metrics.rows_scored.inc(len(body.rows))
    version = model.version
    # Built as plain JSON: ten thousand response objects would cost more than scoring.
    predictions = [
        {"session_id": sid, "probability": round(p, 6), "model_version": version, "tier": t}
        for sid, p, t in zip(cols["session_id"], probs, tiers, strict=True)
    ]
    if explained is not None:
        for item, why in zip(predictions, explained, strict=True):
            item["reasons"] = why
    content = orjson.dumps(
        {
            "model_version": version,
            "calibration_id": model.calibration_id,
            "predictions": predictions,
        }
    )
    return Response(content, media_type="application/json")


@protected.get("/sessions/{session_id}/score", response_model=LatestScoreResponse)
async def latest_score(
    session_id: SessionId,
    request: Request,
    redis: Redis,
    explain: Explain = False,
    reasons: ReasonCount = EVENT_REASONS,
) -> LatestScoreResponse:
    """Return the latest score the stream published for a session.

    With ``explain=true``, its reasons: those the stream published with it (warm and hot
    scores), else made from the session's stored features by the served model, when it
    is the version that made the score (else null, with ``reasons_unavailable``).
    """
    layout = await request.app.state.layouts.get(redis)
    found = None if layout is None else await stored.find(redis, layout, session_id, "latest")
    payload = None
    row = hit_state = None
    if found is not None and layout is not None:
        partition, latest = found
        key = layout.session(partition, session_id)
        entry = None
        # The hit state only to explain: read with the score, as one command.
        more = (keys.HIT_STATE_FIELD,) if explain else ()
        if latest[:1] != b"{":  # it names the score's history field
            entry, row, *rest = await redis.hmget(key, latest, keys.ROW_FIELD, *more)
            hit_state = rest[0] if rest else None
        elif explain:
            row, hit_state = await redis.hmget(key, keys.ROW_FIELD, *more)
        payload = latest_from_hash(session_id, latest, entry, row)
    if payload is None:
        raise HTTPException(status_code=404, detail=f"no score for session {session_id}")
    event = orjson.loads(payload)
    scored = datetime.fromisoformat(event["scored_at"])
    event["age_s"] = round((datetime.now(UTC) - scored).total_seconds(), 3)
    if explain and event.get("reasons") is None:
        model: ConversionModel = request.app.state.model
        event["reasons"], why = explain_stored(model, event, row, hit_state, reasons)
        event["reasons_unavailable"] = why
    return LatestScoreResponse(**event)


@protected.get(
    "/sessions/{session_id}",
    response_model=SessionStateResponse,
    responses={404: {"description": "the stream has no state for this session"}},
)
async def session_state(
    session_id: SessionId, request: Request, redis: Redis
) -> SessionStateResponse:
    """Return the stream's state of a session and its latest scores (at most 50)."""
    layout = await request.app.state.layouts.get(redis)
    if layout is None:
        raise HTTPException(status_code=404, detail=f"no state for session {session_id}")
    found = await stored.find(redis, layout, session_id, keys.ROW_FIELD)
    partition = layout.partition_of(session_id) if found is None else found[0]
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(layout.session(partition, session_id))
    pipe.llen(layout.pending(partition, session_id))
    state, pending = await pipe.execute()
    # The scores are the fields named trigger:hit_number.
    history = {name: raw for name, raw in state.items() if b":" in name}
    applied = sum(1 for name in history if name.startswith(b"hit:"))  # one score each
    if not state and not pending:
        raise HTTPException(status_code=404, detail=f"no state for session {session_id}")

    raw = state.get(keys.ROW_FIELD.encode())
    row = None if raw is None else keys.unpack_row(raw)
    client_id = None if row is None else row.client_id
    start = None if row is None else row.start
    events = [
        orjson.loads(score_from_history(session_id, client_id, start, name.decode(), raw))
        for name, raw in history.items()
    ]
    # In session order: the start, the hits by number, the closing score last.
    rank = {"session_start": 0, "hit": 1, "session_end": 2}
    events.sort(key=lambda e: (rank.get(e["trigger"], 1), e["hit_number"] or 0))
    now = datetime.now(UTC)
    for e in events:
        e["age_s"] = round((now - datetime.fromisoformat(e["scored_at"])).total_seconds(), 3)

    empty = empty_state().tolist()
    packed = state.get(keys.HIT_STATE_FIELD.encode())
    values = empty if packed is None else keys.unpack_hit_state(packed, empty)
    counters = dict(zip(STATE_NAMES, values, strict=True))
    return SessionStateResponse(
        session_id=session_id,
        client_id=client_id,
        start=start,
        ready=b"ready" in state,
        hits_applied=int(applied),
        pending_hits=int(pending),
        state=counters,
        scores_total=len(events),
        scores=[ScoreResponse(**e) for e in events[-HISTORY_LIMIT:]],
    )


@protected.get("/model")
async def model_card(request: Request) -> dict[str, Any]:
    """Return the model card of the model being served, with the online calibration it
    serves with now (``online_calibration``: its id and its shift of the log-odds) and
    its Hot / Warm / Cold thresholds (``tiers``; null for a model without them)."""
    card: dict[str, Any] = request.app.state.card
    model: ConversionModel = request.app.state.model
    return {
        **card,
        "tiers": None if model.tiers is None else model.tiers.as_dict(),
        "online_calibration": {"id": model.calibration_id, "shift": model.calibration_shift},
    }


router.include_router(protected)
