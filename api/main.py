"""The FastAPI app factory: settings, model and Redis live for the app's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from redis.asyncio.cluster import RedisCluster

from api.access import Access, install_log_filter
from api.calibration import watch_calibration
from api.dashboard import router as dashboard_router
from api.errors import validation_error
from api.fastpath import PredictFastPath
from api.headers import SecurityHeaders
from api.metrics import ApiMetrics, BodyLimitMiddleware, MetricsMiddleware
from api.routes import router
from api.settings import ApiSettings
from api.stored import Layouts
from artifact import ArtifactError, ConversionModel, PinnedDigestError, load_model, read_card
from artifact.explain import prepare as prepare_reasons

log = logging.getLogger(__name__)

# Loggers whose lines carry request paths: no key may show in them.
LOGGERS_WITH_PATHS = ("uvicorn.access", "uvicorn.error")


async def watch_model(app: FastAPI, interval_s: float) -> None:
    """Swap in a newly deployed artifact once it loads and verifies.

    The card beside the pickle names the artifact's SHA-256; when it changes, the new
    pickle is loaded (its digest checked before unpickling, against the card and against
    the pinned ``SCORER_MODEL_SHA256`` when one is set; its feature list after) in a
    thread, and replaces the served model only if that succeeds. A broken artifact is
    logged and retried on the next look, so a deploy whose card was written before its
    pickle is picked up once both are in place.
    """
    cfg: ApiSettings = app.state.settings
    warned: str | None = None
    while True:
        await asyncio.sleep(interval_s)
        try:
            card = await asyncio.to_thread(read_card, cfg.model_path)
        except (ArtifactError, OSError, ValueError) as exc:
            if warned != "card":
                log.warning("model reload: cannot read the card: %s", exc)
                warned = "card"
            continue
        sha = card.get("artifact_sha256")
        if sha == app.state.card.get("artifact_sha256"):
            continue
        try:
            model = await asyncio.to_thread(
                load_model, cfg.model_path, expected_sha256=cfg.model_sha256
            )
        except (ArtifactError, OSError, ValueError) as exc:
            if warned != sha:
                log.warning(
                    "model reload: artifact %s not loaded, keeping %s: %s",
                    sha,
                    app.state.model.version,
                    exc,
                )
                result = "digest_mismatch" if isinstance(exc, PinnedDigestError) else "failed"
                app.state.metrics.model_reloads.labels(result).inc()
                warned = sha
            continue
        log.info("model reload: %s replaces %s", model.version, app.state.model.version)
        app.state.model, app.state.card = model, card
        app.state.metrics.serve_model(model.version)
        app.state.metrics.model_reloads.labels("loaded").inc()
        warned = None


def redis_client(cfg: ApiSettings) -> Any:
    """Return the API's Redis client: one server, or a Redis Cluster."""
    options: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
    if cfg.redis_cluster:
        return RedisCluster.from_url(cfg.redis_url, **options)
    return aioredis.Redis.from_url(cfg.redis_url, **options)


def create_app(
    settings: ApiSettings | None = None,
    *,
    model: ConversionModel | None = None,
    redis: Any = None,
) -> FastAPI:
    """Build the app; a test may hand in its own model and Redis client."""
    cfg = settings or ApiSettings()
    access = Access.from_settings(cfg)  # raises AccessError: no keys, and not a demo
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.log(logging.WARNING if access.demo else logging.INFO, "%s", access.describe())
        filters = install_log_filter(access, LOGGERS_WITH_PATHS)
        app.state.model = model or load_model(cfg.model_path, expected_sha256=cfg.model_sha256)
        prepare_reasons(app.state.model)
        app.state.card = (
            read_card(cfg.model_path) if model is None else {"version": app.state.model.version}
        )
        log.info(
            "model %s, %s",
            app.state.model.version,
            "its digest pinned (SCORER_MODEL_SHA256)"
            if cfg.model_sha256
            else "no digest pinned: the card's digest catches damage, not tampering",
        )
        metrics.serve_model(app.state.model.version)
        client = redis if redis is not None else redis_client(cfg)
        app.state.redis = client
        app.state.layouts = Layouts(cfg.redis_key_prefix)
        watchers = []
        if model is None and cfg.model_reload_s > 0:
            watchers.append(asyncio.create_task(watch_model(app, cfg.model_reload_s)))
        if cfg.calibration_follow_s > 0:
            watchers.append(asyncio.create_task(watch_calibration(app, cfg.calibration_follow_s)))
        try:
            yield
        finally:
            for watcher in watchers:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if redis is None:
                await client.aclose()
            for logger, f in filters:
                logger.removeFilter(f)

    app = FastAPI(
        title="SberAutoSubscription conversion scorer",
        description="Scores visits of the car-subscription site: how likely is the visitor "
        "to leave a request or order a call?",
        version="0.1.0",
        lifespan=lifespan,
        # On the operator's port instead (api/operator.py), with /metrics.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = cfg
    app.state.access = access
    app.state.metrics = metrics
    app.include_router(router)
    app.include_router(dashboard_router)
    app.add_exception_handler(RequestValidationError, validation_error)
    # The last added runs first: every answer gets the security headers and is counted,
    # oversized bodies included, and those are refused before anything parses them;
    # then a valid one-row /predict is answered without the framework's layers.
    app.add_middleware(PredictFastPath, state=app.state)
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeaders)
    return app
