"""Back-pressure under a backlog: session partitions held back while their hits lag."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.structs import TopicPartition

from contracts import topics
from stream.clock import Marks
from stream.faust_seam import fetching
from stream.metrics import WorkerMetrics
from stream.settings import StreamSettings

# A sessions partition may lead its hits by at least this many hits fetches' event time
# (``Alignment.align``): resumed at half of it, the hits fetch in flight stays behind.
ALIGN_FETCHES = 4


class Alignment:
    """Pauses and resumes session partitions by how far their hits are behind.

    ``positions`` is the pipeline's next offset to process by (topic, partition), and
    ``marks`` the processor's event-time marks; both are read, never changed, here.
    """

    def __init__(
        self,
        app: Any,
        settings: StreamSettings,
        metrics: WorkerMetrics,
        marks: Marks,
        positions: dict[tuple[str, int], int],
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.marks = marks
        self.positions = positions
        self.inputs = topics.InputTopics(settings.topic_prefix)
        self.held: set[Any] = set()  # session partitions paused by ``align``
        self.held_generation = 0  # the consumer group generation they were paused in
        # event time the hits mark of a partition moved in its latest fetch (ms)
        self.hits_span: dict[int, float] = {}

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
        marks = self.marks
        pause, resume = [], []
        for (topic, partition), tp in assigned.items():
            if topic != self.inputs.sessions:
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
        for kind in topics.InputTopics.KINDS:
            name = self.inputs.name(kind)
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
