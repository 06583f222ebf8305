"""Reading and writing ``conversion.calibrations``, and what its records look like as
metrics.

The topic has one partition; readers follow it from its beginning and keep the latest
valid record per model version (``CalibrationReader``). A record that does not parse
or breaks a bound is skipped with a warning: it cannot move any score.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from contracts import topics
from contracts.calibrations import CalibrationRecord, parse_record
from stream.kafka import client_options
from stream.recalibration import Recalibrator
from stream.settings import StreamSettings

log = logging.getLogger(__name__)


def topic(settings: StreamSettings) -> str:
    """The calibrations topic's name under the settings' prefix."""
    return topics.topic_name(topics.CALIBRATIONS, settings.topic_prefix)


class CalibrationReader:
    """Follows the calibrations topic from its beginning."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.latest: dict[str, CalibrationRecord] = {}
        self.history: list[CalibrationRecord] = []  # every valid record, in order
        self.skipped = 0
        self.consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        """Connect, assigned to the topic's partition from its first offset."""
        consumer = AIOKafkaConsumer(
            **client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        consumer.assign([TopicPartition(topic(self.settings), 0)])
        self.consumer = consumer

    def take(self, values: Iterable[bytes | None]) -> list[CalibrationRecord]:
        """Keep the valid records of these values; return them."""
        new = []
        for value in values:
            try:
                record = parse_record(value)
            except ValueError as exc:
                self.skipped += 1
                log.warning("calibrations: skipped a record: %s", exc)
                continue
            self.history.append(record)
            known = self.latest.get(record.model_version)
            if known is None or record.seq >= known.seq:
                self.latest[record.model_version] = record
                new.append(record)
        return new

    async def poll(self, timeout_ms: int = 0) -> list[CalibrationRecord]:
        """Read what arrived; return the records that became a version's latest."""
        assert self.consumer is not None, "start() first"
        batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=1000)
        return self.take(rec.value for records in batch.values() for rec in records)

    async def catch_up(self, timeout_s: float = 15.0) -> None:
        """Read up to the end the topic had when called."""
        assert self.consumer is not None, "start() first"
        tp = TopicPartition(topic(self.settings), 0)
        end = (await self.consumer.end_offsets([tp]))[tp]
        deadline = time.monotonic() + timeout_s
        while await self.consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the calibrations topic was not read to offset {end}")
            await self.poll(timeout_ms=200)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None


async def publish(
    settings: StreamSettings,
    records: Iterable[CalibrationRecord],
    producer: AIOKafkaProducer | None = None,
) -> None:
    """Publish records, keyed by model version, and wait until the broker has them."""
    own = producer is None
    if producer is None:
        producer = AIOKafkaProducer(**client_options(settings), acks="all")
        await producer.start()
    try:
        for record in records:
            await producer.send_and_wait(
                topic(settings),
                key=record.model_version.encode(),
                value=orjson.dumps(record.model_dump()),
            )
    finally:
        if own:
            await producer.stop()


async def read_all(settings: StreamSettings) -> CalibrationReader:
    """Read the whole topic once (the operator's commands)."""
    reader = CalibrationReader(settings)
    await reader.start()
    try:
        await asyncio.wait_for(reader.catch_up(), timeout=30)
    finally:
        await reader.stop()
    return reader


class CalibrationCollector(Collector):
    """The recalibrator's state per model version, when Prometheus scrapes."""

    def __init__(self, recalibrator: Recalibrator) -> None:
        self.recalibrator = recalibrator

    def collect(self) -> Iterator[Any]:
        labels = ["model_version"]
        shift = GaugeMetricFamily(
            "scorer_calibration_shift",
            "Online calibration in use: its shift of the log-odds (0: as shipped)",
            labels=labels,
        )
        target = GaugeMetricFamily(
            "scorer_calibration_target_shift",
            "The window's latest estimate of the shift, before the step bound",
            labels=labels,
        )
        seq = GaugeMetricFamily(
            "scorer_calibration_seq", "Sequence number of the calibration in use", labels=labels
        )
        paused = GaugeMetricFamily(
            "scorer_calibration_paused", "1 while online calibration is paused", labels=labels
        )
        window = GaugeMetricFamily(
            "scorer_calibration_window_outcomes",
            "Outcomes in the recalibration window",
            labels=labels,
        )
        alert = GaugeMetricFamily(
            "scorer_calibration_alert_shift",
            "The shift beyond which the model should be retrained (SCORER_RECAL_ALERT_SHIFT)",
            value=self.recalibrator.rules.alert_shift,
        )
        for version, w in sorted(self.recalibrator.versions.items()):
            shift.add_metric([version], w.shift)
            seq.add_metric([version], w.seq)
            paused.add_metric([version], 1.0 if w.paused else 0.0)
            window.add_metric([version], len(w.outcomes))
            if w.target is not None:
                target.add_metric([version], w.target)
        yield from (shift, target, seq, paused, window, alert)
