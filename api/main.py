"""The FastAPI app factory: settings, model and Redis live for the app's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI

from api.routes import router
from api.settings import ApiSettings
from artifact import ConversionModel, load_model, read_card


def create_app(
    settings: ApiSettings | None = None,
    *,
    model: ConversionModel | None = None,
    redis: Any = None,
) -> FastAPI:
    """Build the app; a test may hand in its own model and Redis client."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cfg = settings or ApiSettings()
        app.state.settings = cfg
        app.state.model = model or load_model(cfg.model_path)
        app.state.card = (
            read_card(cfg.model_path) if model is None else {"version": app.state.model.version}
        )
        client = (
            redis
            if redis is not None
            else aioredis.Redis.from_url(
                cfg.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
            )
        )
        app.state.redis = client
        try:
            yield
        finally:
            if redis is None:
                await client.aclose()

    app = FastAPI(
        title="SberAutoSubscription conversion scorer",
        description="Scores visits of the car-subscription site: how likely is the visitor "
        "to leave a request or order a call?",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(router)
    return app
