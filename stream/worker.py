"""Starting the worker: settings, model, Redis, the Faust app."""

from __future__ import annotations

import asyncio
import gc
import logging

import faust
import redis.asyncio as aioredis

from artifact import load_model
from contracts import topics
from stream.admin import ensure_topics
from stream.app import attach_pipeline, create_app
from stream.metrics import WorkerMetrics
from stream.processor import Processor
from stream.settings import StreamSettings
from stream.state import RedisStore

log = logging.getLogger(__name__)


def run_worker(settings: StreamSettings) -> int:
    """Load the model, connect to Redis and run the Faust worker until stopped."""
    model = load_model(settings.model_path)
    asyncio.run(ensure_topics(settings))
    client = aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0
    )
    store = RedisStore(
        client,
        prefix=settings.redis_key_prefix,
        ttl_s=settings.session_ttl_s,
        retries=settings.redis_retries,
        dashboard_retention_s=settings.dashboard_retention_s,
    )
    app = create_app(settings)
    metrics = WorkerMetrics()
    hits_topic = topics.topic_name(topics.HITS, settings.topic_prefix)
    attach_pipeline(app, settings, Processor(model, store, hits_topic), metrics)
    metrics.serve(settings.metrics_port)
    log.info(
        "worker %s: model %s, topics prefixed %r",
        settings.app_id,
        model.version,
        settings.topic_prefix,
    )
    # The model, the libraries and the app live as long as the process: left out of
    # the collector's full passes, these take a few ms instead of about 90 ms, a pause
    # every event in flight would wait through.
    gc.collect()
    gc.freeze()
    worker = faust.Worker(app, loglevel=settings.log_level)
    worker.execute_from_commandline()
    return 0
