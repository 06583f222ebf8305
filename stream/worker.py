"""Starting the worker: settings, model, Redis, the Faust app."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

import faust

from artifact import ArtifactError, load_model
from artifact.explain import prepare as prepare_reasons
from contracts import topics
from stream.admin import ensure_topics
from stream.app import attach_pipeline, create_app
from stream.metrics import WorkerMetrics
from stream.nodes import connect
from stream.processor import Processor
from stream.settings import StreamSettings
from stream.state import RedisStore

log = logging.getLogger(__name__)

EXIT_MODEL_REFUSED = 78  # sysexits' EX_CONFIG: the artifact or its pin must be fixed


# Allocations between two collections of the youngest generation (Python's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def settle_gc() -> None:
    """Set the garbage collector up for the worker's life.

    The model, the libraries and the app live as long as the process: left out of the
    collector's full passes, these take a few ms instead of about 90 ms, a pause every
    event in flight would wait through. A batch allocates tens of thousands of short-
    lived objects; with Python's default thresholds the collector ran about 140 times a
    second, and a full pass (33 ms on average) about once a second, 8 % of the worker's
    time in a probe. With a larger young generation it took 3 %.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def run_worker(settings: StreamSettings) -> int:
    """Load the model, connect to Redis and run the Faust worker until stopped."""
    try:
        model = load_model(settings.model_path, expected_sha256=settings.model_sha256)
    except ArtifactError as exc:
        # Before Faust sets up logging: straight to stderr, where a supervisor looks.
        print(f"worker: the model was refused, not starting: {exc}", file=sys.stderr)
        return EXIT_MODEL_REFUSED
    if settings.reasons:
        prepare_reasons(model)
    partitions = asyncio.run(ensure_topics(settings))
    client, lanes = connect(settings.redis_url, cluster=settings.redis_cluster)
    store = RedisStore(
        client,
        prefix=settings.redis_key_prefix,
        ttl_s=settings.session_ttl_s,
        retries=settings.redis_retries,
        dashboard_retention_s=settings.dashboard_retention_s,
        partitions=partitions,
        lanes=lanes,
    )
    app = create_app(settings)
    metrics = WorkerMetrics()
    hits_topic = topics.topic_name(topics.HITS, settings.topic_prefix)
    processor = Processor(
        model,
        store,
        hits_topic,
        cache_sessions=settings.state_cache_sessions,
        cache_age_s=min(600.0, settings.session_ttl_s / 4),
        reasons=settings.reasons,
    )
    attach_pipeline(app, settings, processor, metrics)
    metrics.serve(settings.metrics_port, settings.metrics_host)
    log.info(
        "worker %s: model %s (%s), topics prefixed %r",
        settings.app_id,
        model.version,
        "its digest pinned" if settings.model_sha256 else "no digest pinned",
        settings.topic_prefix,
    )
    settle_gc()
    worker = faust.Worker(app, loglevel=settings.log_level)
    worker.execute_from_commandline()
    return 0
