"""The API's routes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from api.schemas import (
    BatchRequest,
    BatchResponse,
    HealthResponse,
    PredictResponse,
    ScoreResponse,
    SessionRow,
)
from api.settings import ApiSettings
from artifact import ConversionModel
from contracts import keys
from features.columns import SESSION_COLUMNS

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def _settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def _model(request: Request) -> ConversionModel:
    return request.app.state.model


def _redis(request: Request) -> Any:
    return request.app.state.redis


def _require_key(request: Request, key: Annotated[str | None, Security(_api_key_header)]) -> None:
    expected = request.app.state.settings.api_key
    if expected and key != expected:
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")


Settings = Annotated[ApiSettings, Depends(_settings)]
Model = Annotated[ConversionModel, Depends(_model)]
Redis = Annotated[Any, Depends(_redis)]

router = APIRouter()
protected = APIRouter(dependencies=[Depends(_require_key)])


@router.get("/health", response_model=HealthResponse)
async def health(model: Model) -> HealthResponse:
    """Say the process is up, with the model it serves."""
    return HealthResponse(status="ok", model_version=model.version)


@protected.post("/predict", response_model=PredictResponse)
async def predict(row: SessionRow, model: Model) -> PredictResponse:
    """Score one ga_sessions row at session start."""
    p = model.score_rows([row.model_dump()])[0]
    return PredictResponse(
        session_id=row.session_id, probability=round(float(p), 6), model_version=model.version
    )


@protected.post("/predict/batch", response_model=BatchResponse)
async def predict_batch(body: BatchRequest, model: Model, settings: Settings) -> BatchResponse:
    """Score many ga_sessions rows at once."""
    if len(body.rows) > settings.max_batch_rows:
        raise HTTPException(
            status_code=413,
            detail=f"rows: at most {settings.max_batch_rows} "
            f"rows per request, got {len(body.rows)}",
        )
    cols = {c: [getattr(r, c) for r in body.rows] for c in SESSION_COLUMNS}
    probs = model.score_session_vectors(model.session_vectors(cols))
    return BatchResponse(
        model_version=model.version,
        predictions=[
            PredictResponse(
                session_id=r.session_id, probability=round(float(p), 6), model_version=model.version
            )
            for r, p in zip(body.rows, probs, strict=True)
        ],
    )


@protected.get("/sessions/{session_id}/score", response_model=ScoreResponse)
async def latest_score(session_id: str, redis: Redis, settings: Settings) -> ScoreResponse:
    """Return the latest score the stream published for a session."""
    raw = await redis.get(keys.latest_score_key(session_id, settings.redis_key_prefix))
    if raw is None:
        raise HTTPException(status_code=404, detail=f"no score for session {session_id}")
    event = orjson.loads(raw)
    scored = datetime.fromisoformat(event["scored_at"])
    event["age_s"] = round((datetime.now(UTC) - scored).total_seconds(), 3)
    return ScoreResponse(**event)


@protected.get("/model")
async def model_card(request: Request) -> dict[str, Any]:
    """Return the model card of the model being served."""
    card: dict[str, Any] = request.app.state.card
    return card


router.include_router(protected)
