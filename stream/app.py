"""The Faust app, its topics, its pipeline and its timers.

Faust's consumer hands each fetch to the pipeline whole (``stream.faust_seam``); the
pipeline cuts it into micro-batches (its sessions first, then its hits), hands them to
the processor and publishes what it returns. Everything a batch produces is on Kafka before its
offsets may be committed; the processor has written its Redis state (one atomic script
call) before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, cast

import faust
import orjson
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition
from faust.types import TP

from artifact import ArtifactError, PinnedDigestError, load_model, read_card
from contracts import keys, limits, topics
from contracts.dashboard import WORKER_TTL_S, workers_key
from stream.dashboard import worker_name
from stream.faust_seam import BatchApp, Fetch, LeanMonitor, Rewind, fetching, kafka_producer
from stream.kafka import faust_broker, faust_credentials
from stream.metrics import ExitLog, WorkerMetrics
from stream.processor import Output, Processor, Record, SessionsRun, dead_letter
from stream.recovery import Recovery
from stream.settings import StreamSettings
from stream.state import InfrastructureError, RedisLost

log = logging.getLogger(__name__)

# Exit code when Redis or Kafka stay unreachable: the batch is not acked, a supervisor
# restarts the worker and the batch is delivered again.
EXIT_INFRASTRUCTURE = 70
EXIT_BUG = 71
# Most sessions closed in one round of the close sweep (one publish).
CLOSE_ROUND = 500
# Largest record batch the producer builds (Kafka's own limit is 1 MB).
PRODUCER_BATCH_BYTES = 256 * 1024
# The murmur2 hashes of recent message keys are kept up to this many bytes (an entry
# costs its key and about KEY_ENTRY_BYTES of dict and object overhead).
KEY_CACHE_BYTES = 32 * 1024 * 1024
KEY_ENTRY_BYTES = 120
# A sessions partition may lead its hits by at least this many hits fetches' event time
# (``Pipeline.align``): resumed at half of it, the hits fetch in flight stays behind.
ALIGN_FETCHES = 4


class _Batch(Protocol):
    """A sessions or hits batch on its way; the pipeline publishes its output."""

    out: Output


B = TypeVar("B", bound=_Batch)

# Outputs queued in the producer and not yet known to be delivered: the delivery
# futures, the output and its source topic.
Pending = list[tuple[list[Any], Output, str | None]]


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
    """The work on each fetch: batches, publishing, counting, and the timers' work."""

    def __init__(
        self, app: faust.App, settings: StreamSettings, processor: Processor, metrics: WorkerMetrics
    ) -> None:
        self.app = app
        self.settings = settings
        self.processor = processor
        self.metrics = metrics
        prefix = settings.topic_prefix
        self.sessions_name = topics.topic_name(topics.SESSIONS, prefix)
        self.hits_name = topics.topic_name(topics.HITS, prefix)
        self.scores_name = topics.topic_name(topics.SCORES, prefix)
        self.outcomes_name = topics.topic_name(topics.OUTCOMES, prefix)
        self.dead_name = topics.topic_name(topics.DEAD_LETTERS, prefix)
        self.positions: dict[tuple[str, int], int] = {}  # next offset to process
        self.model_sha: str | None = None  # the served artifact's digest, from its card
        self.failed_sha: str | None = None
        self.partition_counts: dict[str, tuple[int, float]] = {}  # topic -> (count, when)
        self._spread = 0  # round-robin partition of keyless messages (dead letters)
        self.key_hashes: dict[bytes, int] = {}  # murmur2 of recent keys (session ids)
        self.key_bytes = 0  # what key_hashes holds, roughly, in bytes
        self.exits = ExitLog(settings.data_dir / "exits.json")
        # Input partitions, as (kind, partition), whose Redis state this worker has
        # checked since their assignment or the last loss; one check at a time.
        self.checked: set[tuple[str, int]] = set()
        self.checking = asyncio.Lock()
        # Partitions being read again: the offset their next fetch must start at.
        self.read_from: dict[tuple[str, int], int] = {}
        self.held: set[Any] = set()  # session partitions paused by ``align``
        # event time the hits mark of a partition moved in its latest fetch (ms)
        self.hits_span: dict[int, float] = {}
        self.held_generation = 0  # the consumer group generation they were paused in
        with contextlib.suppress(ArtifactError, OSError, ValueError):
            self.model_sha = read_card(settings.model_path).get("artifact_sha256")

    async def send_all(
        self, messages: Sequence[tuple[str, bytes | None, bytes]], wait: bool = True
    ) -> list[Any]:
        """Publish messages and wait until Kafka has them all (or, with ``wait`` False,
        return the futures of their delivery: they are in the producer's queue, in order).

        Messages go out as record batches built here, one run per topic partition, the
        partition chosen as the default partitioner would (murmur2 of the key); this
        costs a fraction of one ``send`` call per message.
        """
        if not messages:
            return []
        producer = kafka_producer(self.app)
        runs: dict[tuple[str, int], list[tuple[bytes | None, bytes]]] = {}
        for topic, key, value in self._fitting(messages):
            n = await self._partitions(producer, topic)
            if key is None:
                p = self._spread % n
                self._spread += 1
            else:
                h = self.key_hashes.get(key)
                if h is None:
                    if self.key_bytes > KEY_CACHE_BYTES:
                        self.key_hashes.clear()
                        self.key_bytes = 0
                    h = self.key_hashes[key] = murmur2(key) & 0x7FFFFFFF
                    self.key_bytes += len(key) + KEY_ENTRY_BYTES
                p = h % n
            runs.setdefault((topic, p), []).append((key, value))
        # A batch built here is complete: closing it tells the producer not to hold it
        # for its linger time (an open batch waits for more messages).
        futures = []
        for (topic, p), items in runs.items():
            batch = producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    futures.append(await producer.send_batch(batch, topic, partition=p))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            batch.close()
            futures.append(await producer.send_batch(batch, topic, partition=p))
        if wait:
            await asyncio.gather(*futures)
            return []
        return futures

    def _fitting(
        self, messages: Sequence[tuple[str, bytes | None, bytes]]
    ) -> Iterator[tuple[str, bytes | None, bytes]]:
        """The messages, each one too large for Kafka replaced by a dead letter about it.

        The processor bounds what it makes, so this is the last guard: a batch must
        never be refused by the broker for one of its messages.
        """
        for topic, key, value in messages:
            if len(value) + len(key or b"") <= limits.OUTPUT_MAX_BYTES:
                yield topic, key, value
                continue
            error = f"{len(value)}-byte event for {topic} is over {limits.OUTPUT_MAX_BYTES}"
            log.error("not published: %s", error)
            record = Record(value, topic, -1, -1, key)
            self.metrics.refused.labels("publish", "too_large").inc()
            self.metrics.dead_letters.labels("publish").inc()
            yield self.dead_name, None, dead_letter(record, "publish", error, "too_large")

    async def _partitions(self, producer: Any, topic: str) -> int:
        """Return a topic's partition count, looked up again after a minute."""
        cached = self.partition_counts.get(topic)
        now = time.monotonic()
        if cached is not None and now - cached[1] < 60.0:
            return cached[0]
        count = len(await producer.partitions_for(topic))
        self.partition_counts[topic] = (count, now)
        return count

    async def publish(
        self, out: Output, source: str | None = None, pending: Pending | None = None
    ) -> None:
        """Publish a batch's output.

        ``source`` is the input topic the batch was read from, for the duplicates count.
        With ``pending``, the output is only queued in the producer (in order, so a
        later batch's events still come after it) and its delivery is added there, to
        be awaited with ``settle`` before the fetch counts as handled.
        """
        futures = await self.send_all(
            [(self.scores_name, sid.encode(), payload) for sid, payload in out.scores]
            + [(self.outcomes_name, sid.encode(), payload) for sid, payload in out.outcomes]
            + [(self.dead_name, None, payload) for _, payload in out.dead_letters],
            wait=pending is None,
        )
        if pending is None:
            self.count(out, source)
        else:
            pending.append((futures, out, source))

    async def settle(self, pending: Pending) -> None:
        """Wait until every queued output in ``pending`` is on Kafka, then count it."""
        while pending:
            futures, out, source = pending.pop(0)
            await asyncio.gather(*futures)
            self.count(out, source)

    def count(self, out: Output, source: str | None = None) -> None:
        """Add a published output to the metrics."""
        m = self.metrics
        if out.duplicates and source is not None:
            m.duplicates.labels(source).inc(out.duplicates)
        for trigger, n in out.triggers.items():
            m.scores_out.labels(trigger).inc(n)
        for _, payload in out.outcomes:
            m.outcomes_out.labels(
                "converted" if b'"outcome":"converted"' in payload else "not_converted"
            ).inc()
        for stage, _ in out.dead_letters:
            m.dead_letters.labels(stage).inc()
        for (stage, kind), n in out.refusals.items():
            m.refused.labels(stage, kind).inc(n)
        if out.parked:
            m.parked.inc(out.parked)
        if out.out_of_order:
            m.out_of_order.inc(out.out_of_order)
        if out.late:
            m.late.inc(out.late)
        now = time.time() * 1000.0
        for ts in out.event_ts_ms:
            m.end_to_end.observe(max(0.0, now - ts) / 1000.0)

    async def on_fetch(self, fetch: Fetch) -> None:
        """Process one fetch (what the client has buffered): its sessions, then its hits.

        Each topic's records go in micro-batches of up to ``batch_max``, taken from all
        its partitions in turn, so no partition waits for another's whole buffer. First,
        Redis is checked where this worker has not checked it since an assignment or a
        loss (``stream/recovery.py``); where Redis lost writes, the fetch is dropped and
        the partitions are read again from where Redis's state ends (``Rewind``).
        """
        async with self.checking:
            going_on = {self._key(tp): recs[0].offset for tp, recs in fetch.items()}
            stale = {
                tp
                for tp, recs in fetch.items()
                if self.read_from.get(self._key(tp), recs[0].offset) != recs[0].offset
            }
            if stale:
                # Fetched before its partition was read again from elsewhere.
                raise Rewind({tp: self.read_from[self._key(tp)] for tp in stale})
            for key in going_on:
                self.read_from.pop(key, None)
            if not self.checked.issuperset(going_on):
                await self.check(going_on)
            try:
                await self._process(fetch)
            except RedisLost as exc:
                log.error("%s: reading the input again from where Redis's state ends", exc)
                self.metrics.redis_losses.inc()
                self.processor.forget_state()
                self.checked.clear()
                await self.check(going_on)
                raise Rewind({}) from None  # a partition not rewound: the fetch again

    @functools.cached_property
    def recovery(self) -> Recovery:
        """What checks Redis against the input (stream/recovery.py)."""
        names = {"sessions": self.sessions_name, "hits": self.hits_name}
        return Recovery(self.settings, self.processor.store, names)

    def _key(self, tp: Any) -> tuple[str, int]:
        return ("sessions" if tp.topic == self.sessions_name else "hits", tp.partition)

    def _tp(self, key: tuple[str, int]) -> TP:
        return TP(self.sessions_name if key[0] == "sessions" else self.hits_name, key[1])

    def unchecked(self) -> None:
        """Forget which partitions Redis was checked for (after an assignment)."""
        self.checked.clear()

    async def check(self, going_on: dict[tuple[str, int], int]) -> None:
        """Check Redis for every assigned input partition; rewind where it is behind.

        ``going_on`` gives the next offset of the partitions in the fetch in hand; the
        others go on from where this worker read them last, or from the group's
        committed offset. Raises Rewind when a partition of the fetch must be read
        again from elsewhere.
        """
        nxt: dict[tuple[str, int], int | None] = dict(going_on)
        for tp in self._assigned():
            nxt.setdefault(self._key(tp), self.positions.get((tp.topic, tp.partition)))
        with self._fatal("checking Redis against the input"):
            rewinds = await self.recovery.check(nxt)
        self.checked = set(nxt)
        if not rewinds:
            return
        self.metrics.rebuilt_partitions.inc(len(rewinds))
        for key, (offset, upto) in rewinds.items():
            self.metrics.reread.inc(upto - offset)
            log.warning(
                "redis holds %s[%d] up to offset %d, not %d: reading it again",
                key[0],
                key[1],
                offset,
                upto,
            )
            self.processor.watermarks.pop(key, None)
            tp = self._tp(key)
            self.positions[(tp.topic, tp.partition)] = offset
            self.read_from[key] = offset
        mine = {self._tp(key): o for key, (o, _) in rewinds.items() if key in going_on}
        others = {self._tp(key): o for key, (o, _) in rewinds.items() if key not in going_on}
        if others:
            await cast(Any, self.app.consumer).rewind(others)
        if mine:
            raise Rewind(mine)

    def _assigned(self) -> list[Any]:
        try:
            assigned = self.app.consumer.assignment()
        except Exception:  # noqa: BLE001 - no consumer yet (starting or rebalancing)
            return []
        return [tp for tp in assigned if tp.topic in (self.sessions_name, self.hits_name)]

    async def _process(self, fetch: Fetch) -> None:
        """Process a checked fetch; its offsets go into Redis with its last write."""
        sessions: list[list[Record]] = []
        hits: list[list[Record]] = []
        positions = self.positions
        offsets: dict[tuple[str, int], int] = {}
        for tp, recs in fetch.items():
            into = sessions if tp.topic == self.sessions_name else hits
            into.append(
                [
                    Record(r.value, r.topic, r.partition, r.offset, r.key, _stamp(r.timestamp))
                    for r in recs
                ]
            )
            positions[(tp.topic, tp.partition)] = recs[-1].offset + 1
            offsets[self._key(tp)] = recs[-1].offset + 1
        # Each batch's output is queued in the producer, and the next batch goes on while
        # Kafka takes it; the fetch is handled once all of it is on Kafka.
        pending: Pending = []
        size = self.settings.batch_max
        events_in = self.metrics.events_in
        events_in.labels(self.sessions_name).inc(sum(len(run) for run in sessions))
        released, parked = await self.run_sessions(list(_interleave(sessions, size)), pending)
        events_in.labels(self.hits_name).inc(sum(len(run) for run in hits))
        # The close sweep leaves the released sessions open until their parked hits are
        # in. Those hits go first, before the fetch's own.
        marks = self.processor.watermarks
        before = {run[0].partition: marks.get(("hits", run[0].partition)) for run in hits}
        with self.processor.releasing_sessions(released):
            batches = [parked[i : i + size] for i in range(0, len(parked), size)]
            batches += list(_interleave(hits, size))
            # The fetch's offsets go with its last write: after the release, its parked
            # hits and every state it changed (see stream/recovery.py).
            await self.run_hits(batches, pending, offsets)
            if not batches:
                with self._fatal("storing a fetch's offsets"):
                    await self.processor.store.write([], [], offsets=offsets)
            for partition, mark in before.items():
                after = marks.get(("hits", partition))
                if mark is not None and after is not None:
                    self.hits_span[partition] = after[0] - mark[0]
            with self._fatal("publishing a fetch's output"):
                await self.settle(pending)
                if parked:
                    # Their scores are on Kafka: they are applied for good.
                    await self.processor.forget_pending(
                        {(r.key or b"").decode(): r.partition for r in parked}
                    )

    def on_revoked(self, revoked: Any) -> None:
        """Forget what this worker knew of partitions it gave up."""
        for tp in revoked:
            self.positions.pop((tp.topic, tp.partition), None)
            if tp.topic in (self.sessions_name, self.hits_name):
                key = self._key(tp)
                self.checked.discard(key)
                self.read_from.pop(key, None)
                self.processor.store.expected.pop(key, None)
                self.processor.cache.drop_partitions([tp.partition])
        cast(Any, self.app.consumer).forget(set(revoked))

    async def run_sessions(
        self, batches: list[list[Record]], pending: Pending
    ) -> tuple[dict[str, int], list[Record]]:
        """Process a fetch's session batches, then release their sessions to their hits.

        As for hits (``run_hits``), the next batch's read is sent before a batch is
        computed and a batch's write is sent once it is computed; a batch's output is
        queued once its write has landed, in order. Once every start score is on Kafka,
        the sessions are released in one call: only then may their hits be applied.
        Returns the sessions released and the hits parked for them, which the caller
        applies and then drops (``forget_pending``) once their scores are on Kafka.
        """
        if not batches:
            return {}, []
        proc = self.processor
        run = SessionsRun()
        with self._fatal("a sessions batch"):
            await self._overlapped(
                "sessions",
                batches,
                lambda records: proc.sessions_read(proc.sessions_parse(records)),
                lambda batch: proc.sessions_compute(batch, run),
                lambda batch, _: proc.sessions_write(batch, run),
                pending,
            )
            released = dict(run.released)
            if not released:
                return {}, []
            await self.settle(pending)
            return released, await proc.release(released)

    async def run_hits(
        self,
        batches: list[list[Record]],
        pending: Pending,
        offsets: dict[tuple[str, int], int] | None = None,
    ) -> None:
        """Process a fetch's hits batches, Redis's work on each overlapped with the worker's.

        A close round of one of their sessions is waited for (the gate), so a late hit's
        score and outcome come after the close's. ``HitsRun`` keeps the states right
        while a batch's read comes before the writes of the batches just ahead of it.
        """
        if not batches:
            return
        proc = self.processor
        async with proc.hits_run() as run:
            with self._fatal("a hits batch"):
                await self._overlapped(
                    "hits",
                    batches,
                    lambda records: proc.hits_read(proc.hits_parse(records), run),
                    lambda batch: proc.hits_compute(batch, run),
                    lambda batch, last: proc.hits_write(batch, run, offsets if last else None),
                    pending,
                )

    async def _overlapped(
        self,
        kind: str,
        batches: list[list[Record]],
        read: Callable[[list[Record]], Awaitable[B]],
        compute: Callable[[B], Awaitable[B]],
        write: Callable[[B, bool], Awaitable[Awaitable[None]]],
        pending: Pending,
    ) -> None:
        """Run batches with Redis's work on each overlapped with the worker's.

        The next batch's read is sent before a batch is computed, and a batch's write
        is sent once it is computed: Redis runs them while the worker computes the next
        batch, whose read is back by then. A batch's output is queued once its write
        has landed, in order. ``write`` is told whether its batch is the last.
        """
        nxt = await read(batches[0])
        writing: tuple[Awaitable[None], Output, float] | None = None
        for k, records in enumerate(batches):
            started = time.perf_counter()
            self.metrics.batch_size.labels(kind).observe(len(records))
            reading = nxt
            if k + 1 < len(batches):
                nxt = await read(batches[k + 1])
            batch = await compute(reading)
            if writing is not None:
                await self._land(*writing, kind, pending)
            writing = (await write(batch, k + 1 == len(batches)), batch.out, started)
            await self.align()
        if writing is not None:
            await self._land(*writing, kind, pending)

    async def _land(
        self, landed: Awaitable[None], out: Output, started: float, kind: str, pending: Pending
    ) -> None:
        """Wait for a batch's write to land, then queue its output; time the batch."""
        await landed
        source = self.sessions_name if kind == "sessions" else self.hits_name
        await self.publish(out, source, pending)
        self.metrics.batch_seconds.labels(kind).observe(time.perf_counter() - started)

    @contextlib.contextmanager
    def _fatal(self, what: str) -> Iterator[None]:
        """Exit the process on a failure; what was in hand is done again after a restart.

        Nothing of a fetch in hand is committed, so it is delivered again; a close in
        hand stays open in Redis and the next sweep takes it up. That happens after a
        restart if Redis or Kafka stayed away, or once the bug is fixed. Bad data never
        gets here: every failure of one record is a dead letter. The reason is recorded
        (``ExitLog``) for the next start to count.
        """
        try:
            yield
        except RedisLost:
            raise  # the caller reads the input again (stream/recovery.py)
        except (InfrastructureError, KafkaError) as exc:
            reason = "redis" if isinstance(exc, InfrastructureError) else "kafka"
            log.critical("giving up on %s: %r; exiting so it is delivered again", what, exc)
            self.exits.record(reason, f"{what}: {exc!r}")
            os._exit(EXIT_INFRASTRUCTURE)
        except Exception as exc:
            log.critical("unexpected failure on %s; exiting uncommitted", what, exc_info=True)
            self.exits.record("bug", f"{what}: {exc!r}")
            os._exit(EXIT_BUG)

    async def align(self) -> None:
        """Hold a session partition back while its hits are far behind in event time.

        A backlog (a replay, or a worker catching up after an outage) is read much faster
        on ga.sessions than on ga.hits, which has nine times the events. Unchecked, every
        session of the backlog would be stored long before its hits arrive: Redis fills
        up and sessions may expire before their hits are applied. So a session partition
        whose event-time mark is more than its lead ahead of its hits' mark stops being
        fetched while those hits have a backlog; it is fetched again once the hits are
        within half that lead, or have nothing left to read. The lead is ``align_lead_s``,
        or ALIGN_FETCHES times the event time the partition's latest hits fetch spanned
        if that is more: a hits fetch already on its way when the partition is resumed
        must not take the hits past the sessions read.

        The pause is the Kafka client's own: records it had fetched but not handed out are
        dropped and fetched again on resume, and nothing already handed out is skipped.
        """
        lead_ms = self.settings.align_lead_s * 1000.0
        if lead_ms <= 0:
            return
        consumer = self.app.consumer
        try:
            assigned = {(tp.topic, tp.partition): tp for tp in consumer.assignment()}
        except Exception:  # noqa: BLE001 - no consumer yet (starting or rebalancing)
            return
        generation = getattr(self.app, "consumer_generation_id", 0)
        if generation != self.held_generation:
            # A rebalance gives the client a fresh assignment, paused nowhere.
            self.held.clear()
            self.held_generation = generation
        self.held &= set(assigned.values())
        marks = self.processor.watermarks
        pause, resume = [], []
        for (topic, partition), tp in assigned.items():
            if topic != self.sessions_name:
                continue
            lead = max(lead_ms, ALIGN_FETCHES * self.hits_span.get(partition, 0.0))
            s_mark = marks.get(("sessions", partition))
            h_mark = marks.get(("hits", partition))
            ahead_ms = 0.0
            if s_mark is not None and h_mark is not None and "hits" in await self.behind(partition):
                ahead_ms = s_mark[0] - h_mark[0]
            if tp in self.held:
                if ahead_ms <= lead / 2:
                    resume.append(tp)
            elif ahead_ms > lead:
                pause.append(tp)
        if pause:
            paused = await self.fetching(pause, False)
            self.held.update(paused)
            self.metrics.pauses.inc(len(paused))
        if resume:
            # One the client no longer has is resumed by its new assignment anyway.
            await self.fetching(resume, True)
            self.held.difference_update(resume)
        self.metrics.paused.set(len(self.held))

    async def fetching(self, tps: list[Any], on: bool) -> list[Any]:
        """Pause (on=False) or resume fetching partitions (``faust_seam.fetching``)."""
        return await fetching(self.app, tps, on)

    async def behind(self, partition: int) -> set[str]:
        """The input kinds ("sessions", "hits") with records of a partition not read yet.

        A partition this process has not read from yet (just assigned, or just started)
        counts from the consumer's own position, its committed offset to begin with;
        until the first fetch tells its high-water mark it counts as behind. A worker
        that takes over a partition of a backlog must not take it for quiet: the marks
        it inherits are seconds old, and the wall clock would move the sessions' mark,
        hours ahead of the hits, on to close sessions whose hits are still unread.
        """
        out = set()
        consumer = self.app.consumer
        for kind, name in (("sessions", self.sessions_name), ("hits", self.hits_name)):
            tp = TopicPartition(name, partition)
            try:
                high = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - not assigned any more
                continue
            done = self.positions.get((name, partition))
            if done is None:
                try:
                    # It waits while the consumer looks up the committed offset.
                    done = await asyncio.wait_for(consumer.position(tp), 1.0)
                except TimeoutError:
                    done = None
                except Exception:  # noqa: BLE001 - not assigned any more, or rebalancing
                    continue
                if high is None or done is None:
                    out.add(kind)
                    continue
            if high is not None and high > done:
                out.add(kind)
        return out

    def my_partitions(self) -> set[int]:
        """Return the input partitions assigned to this worker."""
        try:
            assigned = self.app.consumer.assignment()
        except Exception:  # noqa: BLE001 - no consumer yet (starting or rebalancing)
            return set()
        return {tp.partition for tp in assigned if tp.topic in (self.sessions_name, self.hits_name)}

    async def close_idle(self) -> int:
        """Close the idle sessions of this worker's partitions; return how many.

        All the partitions are swept together, in rounds of up to ``CLOSE_ROUND``
        sessions. A round holds its sessions (not the others) for three Redis round
        trips (the due sessions; their states and stored copies, read at once; the
        close) and the publish; one more round trip after it takes the sessions out of
        the open sets.
        """
        closed = 0
        gap_ms = self.settings.session_gap_s * 1000.0
        if not self.checking.locked() and any(
            self._key(tp) not in self.checked for tp in self._assigned()
        ):
            # A quiet partition is checked here, since no fetch of it comes to check it.
            async with self.checking:
                await self.check({})
        try:
            with self._fatal("closing sessions"):
                # Only partitions whose Redis state is checked: a session must not be
                # closed on state that Redis lost part of.
                partitions = sorted(
                    p
                    for p in self.my_partitions()
                    if ("sessions", p) in self.checked and ("hits", p) in self.checked
                )
                behind = {p: await self.behind(p) for p in partitions}
                upto = await self.processor.close_horizon(behind, gap_ms)
                while upto:
                    # The sessions being closed are held until their final events are
                    # published: a late hit for one of them waits, so its score and
                    # outcome come after the close's. Hits of other sessions go on.
                    async with self.processor.closing(upto, CLOSE_ROUND) as out:
                        if not out.closed:
                            break
                        await self.publish(out)
                    await self.processor.finish_close(out.closed)
                    n = sum(len(sids) for sids in out.closed.values())
                    closed += n
                    self.metrics.closed.inc(n)
                open_total = await self.processor.store.open_count(partitions)
        except RedisLost as exc:
            log.error("%s: closes wait until Redis is rebuilt", exc)
            self.metrics.redis_losses.inc()
            self.processor.forget_state()
            self.checked.clear()
            return closed
        self.metrics.open_sessions.set(open_total)
        return closed

    def update_lag(self) -> int:
        """Set the consumer-lag gauges from the partitions' high-water marks; return their sum."""
        total = 0
        try:
            assigned = self.app.consumer.assignment()
            for tp in assigned:
                if tp.topic not in (self.sessions_name, self.hits_name):
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
                "partitions": sorted(self.my_partitions()),
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

    async def reload_model(self) -> bool:
        """Swap in a newly deployed artifact once it verifies; return whether it did.

        The card beside the pickle names the artifact's SHA-256; a new digest means a
        new artifact. One that fails to load, or whose digest is not the pinned one
        (``SCORER_MODEL_SHA256``), is logged once and skipped until its card changes
        again; the current model keeps scoring.
        """
        path = self.settings.model_path
        try:
            card = await asyncio.to_thread(read_card, path)
        except (ArtifactError, OSError, ValueError):
            return False
        sha = card.get("artifact_sha256")
        if sha in (self.model_sha, self.failed_sha):
            return False
        current = self.processor.model
        try:
            model = await asyncio.to_thread(
                load_model, path, expected_sha256=self.settings.model_sha256
            )
        except (ArtifactError, OSError, ValueError) as exc:
            log.warning(
                "model reload: %s not loaded, keeping %s: %s",
                card.get("version"),
                current.version,
                exc,
            )
            result = "digest_mismatch" if isinstance(exc, PinnedDigestError) else "failed"
            self.metrics.model_reloads.labels(result).inc()
            self.failed_sha = sha
            return False
        self.processor.model = model
        self.model_sha, self.failed_sha = sha, None
        self.metrics.use_model(model.version)
        self.metrics.model_reloads.labels("loaded").inc()
        log.info("model reload: %s replaces %s", model.version, current.version)
        return True


def attach_pipeline(
    app: BatchApp, settings: StreamSettings, processor: Processor, metrics: WorkerMetrics
) -> Pipeline:
    """Subscribe the app to the input topics, hand it the pipeline and set its timers."""
    pipe = Pipeline(app, settings, processor, metrics)
    metrics.use_model(processor.model.version)
    metrics.restarted(pipe.exits)
    for name in (pipe.sessions_name, pipe.hits_name):
        app.topics.add(app.topic(name))  # subscribed; the fetches go to the pipeline
    app.batch_handler = pipe.on_fetch
    app.on_seek = pipe.unchecked

    async def forget(sender: Any, revoked: Any, **kwargs: Any) -> None:
        pipe.on_revoked(revoked)

    app.on_partitions_revoked.connect(cast(Any, forget))

    @app.task
    async def close_idle_sessions() -> None:
        await every(settings.close_check_s, pipe.close_idle)

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


def _interleave(runs: list[list[Record]], size: int) -> Iterator[list[Record]]:
    """Batches of up to ``size`` records, shared equally among the runs (partitions).

    Each run keeps its order; a batch is full while records are left, and a run with
    fewer records than its share leaves the rest of the batch to the others.
    """
    at = [0] * len(runs)
    while True:
        batch: list[Record] = []
        live = [k for k, run in enumerate(runs) if at[k] < len(run)]
        while live and len(batch) < size:
            share = -(-(size - len(batch)) // len(live))  # rounded up
            for k in live:
                take = runs[k][at[k] : at[k] + min(share, size - len(batch))]
                at[k] += len(take)
                batch.extend(take)
            live = [k for k in live if at[k] < len(runs[k])]
        if not batch:
            return
        yield batch


def _stamp(timestamp: int | None) -> float | None:
    """A record's Kafka timestamp in ms, None if it has none."""
    return None if timestamp is None or timestamp < 0 else float(timestamp)


def _totals(counter: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[",".join(sample.labels.values())] = sample.value
    return out
