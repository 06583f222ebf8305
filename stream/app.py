"""The Faust app, its topics, its pipeline and its timers.

Faust's consumer hands each fetch to the pipeline whole (``stream.faust_seam``); the
pipeline checks it may be processed (``stream/partitions.py``), runs it through the
processor in micro-batches (``stream/fetches.py``) and publishes what that returns
(``stream/publisher.py``). Everything a batch produces is on Kafka before its offsets
may be committed; the processor has written its Redis state (one atomic script call)
before that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
import orjson

from contracts import keys, topics
from contracts.dashboard import WORKER_TTL_S, workers_key
from stream.alignment import Alignment
from stream.calibration_follow import CalibrationFollower, follow
from stream.dashboard import worker_name
from stream.faust_seam import BatchApp, Fetch, LeanMonitor, Rewind
from stream.fetches import FetchRunner
from stream.kafka import faust_broker, faust_credentials
from stream.metrics import ExitLog, WorkerMetrics
from stream.partitions import Partitions
from stream.processor import Processor
from stream.publisher import PRODUCER_BATCH_BYTES, Publisher
from stream.reloads import ModelReloads
from stream.settings import StreamSettings
from stream.state import RedisLost
from stream.sweep import CloseSweep

log = logging.getLogger(__name__)


def create_app(settings: StreamSettings) -> BatchApp:
    """Build the Faust app (its topics and timers come with ``attach_pipeline``)."""
    app = BatchApp(
        settings.app_id,
        broker=faust_broker(settings),
        broker_credentials=faust_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.topic_partitions,
        processing_guarantee="at_least_once",
        datadir=str(settings.data_dir),
        web_enabled=False,
        store="memory://",
        producer_linger_ms=1,
        # Every in-sync replica has a score before it counts as sent: a broker that
        # dies takes nothing with it (with min.insync.replicas=2 on a three-node cluster).
        producer_acks=-1,
        # A batch's scores for one partition fit one record batch: the producer queues
        # one record batch per partition at a time, and a second would wait for the
        # first to be sent.
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        producer_max_request_size=4 * PRODUCER_BATCH_BYTES,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        broker_session_timeout=settings.kafka_session_timeout_s,
        consumer_max_fetch_size=settings.kafka_max_fetch_bytes,
        broker_heartbeat_interval=max(1.0, settings.kafka_session_timeout_s / 4),
        monitor=LeanMonitor(),
    )
    app.fetch_max_wait_ms = settings.kafka_fetch_wait_ms
    app.fetch_min_bytes = settings.kafka_fetch_min_bytes
    return app


class Pipeline:
    """The app's handlers: each fetch, each revocation, and the work of each timer.

    The work itself is done by one part per job: ``partitions`` (what Redis holds of
    the partitions held, and rewinds), ``fetches`` (a fetch cut into batches and run
    through the processor), ``publisher`` (the output on Kafka), ``alignment`` (back-
    pressure under a backlog), ``sweep`` (the close sweep), ``reloads`` (the model) and
    ``calibrations`` (its online calibration).
    """

    def __init__(
        self, app: faust.App, settings: StreamSettings, processor: Processor, metrics: WorkerMetrics
    ) -> None:
        self.app = app
        self.settings = settings
        self.processor = processor
        self.metrics = metrics
        self.inputs = topics.InputTopics(settings.topic_prefix)
        self.positions: dict[tuple[str, int], int] = {}  # next offset to process
        self.exits = ExitLog(settings.data_dir / "exits.json")
        self.publisher = Publisher(app, settings, metrics)
        self.alignment = Alignment(app, settings, metrics, processor.watermarks, self.positions)
        self.partitions = Partitions(app, settings, processor, metrics, self.exits, self.positions)
        self.fetches = FetchRunner(
            settings, processor, self.publisher, self.alignment, metrics, self.exits, self.positions
        )
        self.sweep = CloseSweep(
            settings,
            processor,
            self.partitions,
            self.alignment,
            self.publisher,
            metrics,
            self.exits,
        )
        self.reloads = ModelReloads(settings, processor, metrics)
        self.calibrations = CalibrationFollower(settings, processor, metrics)

    async def on_fetch(self, fetch: Fetch) -> None:
        """Process one fetch (what the client has buffered): its sessions, then its hits.

        First, Redis is checked where this worker has not checked it since an assignment
        or a loss (``stream/recovery.py``); where Redis lost writes, the fetch is dropped
        and the partitions are read again from where Redis's state ends (``Rewind``).
        """
        if not self.calibrations.ready.is_set():
            await self.calibrations.wait_ready()
        partitions = self.partitions
        async with partitions.checking:
            going_on = await partitions.admit(fetch)
            try:
                await self.fetches.process(fetch)
            except RedisLost as exc:
                log.error("%s: reading the input again from where Redis's state ends", exc)
                self.metrics.redis_losses.inc()
                self.processor.forget_state()
                partitions.checked.clear()
                await partitions.check(going_on)
                raise Rewind({}) from None  # a partition not rewound: the fetch again

    def on_revoked(self, revoked: Any) -> None:
        """Forget what this worker knew of partitions it gave up."""
        self.partitions.forget(revoked)

    def unchecked(self) -> None:
        """Forget which partitions Redis was checked for (after an assignment)."""
        self.partitions.checked.clear()

    async def align(self) -> None:
        """Pause or resume session partitions by their hits' lag (``Alignment.align``)."""
        await self.alignment.align()

    async def close_idle(self) -> int:
        """Close the idle sessions of this worker's partitions (``CloseSweep``)."""
        return await self.sweep.close_idle()

    async def reload_model(self) -> bool:
        """Swap in a newly deployed artifact once it verifies (``ModelReloads``)."""
        return await self.reloads.reload_model()

    def update_lag(self) -> int:
        """Set the consumer-lag gauges from the partitions' high-water marks; return their sum."""
        total = 0
        try:
            assigned = self.app.consumer.assignment()
            for tp in assigned:
                if tp.topic not in self.inputs:
                    continue
                high = self.app.consumer.highwater(tp)
                if high is None:
                    continue
                done = self.positions.get((tp.topic, tp.partition), 0)
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - done))
                total += max(0, high - done)
        except Exception as exc:  # noqa: BLE001 - lag is best effort while rebalancing
            log.debug("lag not updated: %s", exc)
        return total

    async def report_status(self, lag: int) -> None:
        """Tell the dashboard this worker's lag, model version and partitions."""
        status = orjson.dumps(
            {
                "lag": lag,
                "model_version": self.processor.model.version,
                "partitions": sorted(self.partitions.mine()),
                "at_ms": time.time() * 1000.0,
            }
        )
        key = workers_key(self.settings.redis_key_prefix)
        layout = {
            "version": keys.LAYOUT_VERSION,
            "partitions": self.processor.store.layout.partitions,
        }
        try:
            r = self.processor.store.r
            await r.hset(key, worker_name(), status)
            await r.expire(key, WORKER_TTL_S)
            # The layout again, in case the node holding it lost it (the API needs it).
            await r.hset(keys.layout_key(self.settings.redis_key_prefix), mapping=layout)
        except Exception as exc:  # noqa: BLE001 - the status is best effort
            log.debug("status not reported: %s", exc)


def attach_pipeline(
    app: BatchApp, settings: StreamSettings, processor: Processor, metrics: WorkerMetrics
) -> Pipeline:
    """Subscribe the app to the input topics, hand it the pipeline and set its timers."""
    pipe = Pipeline(app, settings, processor, metrics)
    metrics.use_model(processor.model.version)
    metrics.restarted(pipe.exits)
    for name in (pipe.inputs.sessions, pipe.inputs.hits):
        app.topics.add(app.topic(name))  # subscribed; the fetches go to the pipeline
    app.batch_handler = pipe.on_fetch
    app.on_seek = pipe.unchecked

    async def forget(sender: Any, revoked: Any, **kwargs: Any) -> None:
        pipe.on_revoked(revoked)

    app.on_partitions_revoked.connect(cast(Any, forget))

    @app.task
    async def close_idle_sessions() -> None:
        await every(settings.close_check_s, pipe.close_idle)

    if settings.calibration_follow_s > 0:

        @app.task
        async def follow_calibrations() -> None:
            await follow(pipe.calibrations)

    @app.timer(interval=0.25)
    async def align() -> None:
        await pipe.align()

    @app.timer(interval=5.0)
    async def lag() -> None:
        await pipe.report_status(pipe.update_lag())

    if settings.model_reload_s > 0:

        @app.timer(interval=settings.model_reload_s)
        async def reload() -> None:
            await pipe.reload_model()

    @app.timer(interval=30.0)
    async def report() -> None:
        log.info(
            "worker: %s events in, %s scores out",
            {k: int(v) for k, v in _totals(metrics.events_in).items()},
            {k: int(v) for k, v in _totals(metrics.scores_out).items()},
        )

    return pipe


async def every(
    period_s: float,
    job: Callable[[], Awaitable[Any]],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Run ``job`` every ``period_s``, one run at a time, for ever.

    A run that takes longer than the period (the close sweep under a backlog) is
    followed at once by the next. Faust's timers do the same but log a warning each
    time, which says nothing an operator can act on.
    """
    started = clock()
    while True:
        await sleep(max(0.0, period_s - (clock() - started)))
        started = clock()
        await job()


def _totals(counter: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[",".join(sample.labels.values())] = sample.value
    return out
