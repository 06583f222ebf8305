"""Online model quality: session-start scores joined with outcomes, per model version.

    python -m stream quality [--from-beginning]

Reads ``conversion.scores`` and ``conversion.outcomes``, pairs each session's
session-start score with its outcome (a late ``converted`` supersedes an inactivity
close) and serves, per model version over a rolling window (``SCORER_QUALITY_WINDOW_S``,
an hour by default), on ``SCORER_QUALITY_METRICS_PORT`` of ``SCORER_METRICS_HOST``
(127.0.0.1 unless configured otherwise):

- ``scorer_quality_roc_auc{model_version}``: ROC-AUC of the pairs in the window;
- ``scorer_quality_predicted{model_version,decile}`` and
  ``scorer_quality_observed{model_version,decile}``: mean score and conversion rate by
  score decile (calibration);
- ``scorer_quality_scores{model_version}``: the distribution of the window's scores;
- ``scorer_quality_pairs{model_version}``, ``scorer_quality_conversion_rate{model_version}``.

It also recalibrates online (``stream.recalibration``; ``SCORER_RECALIBRATE=0``: not):
it reads ``conversion.calibrations`` from its beginning, publishes the calibrations its
window of outcomes calls for there, and serves ``scorer_calibration_*``.

The state is in memory: after a restart the window fills again (or is rebuilt from
the topics' retained history with ``--from-beginning``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from contracts import topics
from stream.admin import ensure_topics
from stream.calibration_topic import CalibrationCollector, CalibrationReader, publish
from stream.kafka import client_options
from stream.recalibration import RecalibrationRules, Recalibrator
from stream.settings import StreamSettings

log = logging.getLogger(__name__)

SCORE_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


@dataclass
class Pair:
    """A session's session-start score and what became of the session."""

    model_version: str
    probability: float
    converted: bool
    at: float  # wall time the outcome was seen
    shift: float = 0.0  # the online calibration's shift the score was made with
    event_time: str | None = None  # the session's start


def roc_auc(p: np.ndarray, y: np.ndarray) -> float | None:
    """ROC-AUC by ranks (ties count half); None without both classes."""
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = p[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


class QualityTracker:
    """Pairs scores with outcomes and summarises the rolling window."""

    def __init__(
        self,
        window_s: float = 3600.0,
        max_sessions: int = 2_000_000,
        on_pair: Callable[[str, Pair], None] | None = None,
        on_event_time: Callable[[str | None], None] | None = None,
    ) -> None:
        self.window_s = window_s
        self.max_sessions = max_sessions
        self.on_pair = on_pair  # told of every new pair (the recalibrator)
        self.on_event_time = on_event_time  # told of every score's event time (the same)
        self.start_scores: OrderedDict[str, tuple[str, float, float, str | None]] = OrderedDict()
        self.waiting: OrderedDict[str, tuple[bool, float]] = OrderedDict()  # outcome first
        self.pairs: OrderedDict[str, Pair] = OrderedDict()

    def _bound(self, d: OrderedDict[str, Any]) -> None:
        while len(d) > self.max_sessions:
            d.popitem(last=False)

    def on_score(self, event: dict[str, Any], now: float | None = None) -> None:
        """Remember a session-start score; pair it if its outcome came first."""
        if self.on_event_time is not None:
            self.on_event_time(event.get("event_time"))
        if event.get("trigger") != "session_start":
            return
        sid = event["session_id"]
        p, shift = float(event["probability"]), float(event.get("calibration_shift") or 0.0)
        if not (0.0 <= p <= 1.0 and math.isfinite(shift)):
            raise ValueError(f"probability {p} or shift {shift} out of range")
        time_ = event.get("event_time")
        self.start_scores[sid] = (
            str(event["model_version"]),
            p,
            shift,
            time_ if isinstance(time_, str) else None,
        )
        self._bound(self.start_scores)
        if sid in self.waiting:
            converted, at = self.waiting.pop(sid)
            self._pair(sid, converted, at)

    def on_outcome(self, event: dict[str, Any], now: float | None = None) -> None:
        """Record an outcome; a conversion supersedes an inactivity close."""
        sid = event["session_id"]
        converted = event["outcome"] == "converted"
        at = time.time() if now is None else now
        known = self.pairs.get(sid)
        if known is not None:
            known.converted = known.converted or converted
            return
        if sid in self.start_scores:
            self._pair(sid, converted, at)
        else:
            before = self.waiting.get(sid)
            self.waiting[sid] = ((before[0] if before else False) or converted, at)
            self._bound(self.waiting)

    def _pair(self, sid: str, converted: bool, at: float) -> None:
        version, p, shift, event_time = self.start_scores[sid]
        pair = self.pairs[sid] = Pair(version, p, converted, at, shift, event_time)
        self.pairs.move_to_end(sid)
        if self.on_pair is not None:
            self.on_pair(version, pair)

    def window(self, now: float | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Return (scores, labels) per model version of the pairs in the window."""
        now = time.time() if now is None else now
        while self.pairs:
            sid, first = next(iter(self.pairs.items()))
            if now - first.at <= self.window_s:
                break
            self.pairs.popitem(last=False)
        by_version: dict[str, tuple[list[float], list[bool]]] = {}
        for pair in self.pairs.values():
            ps, ys = by_version.setdefault(pair.model_version, ([], []))
            ps.append(pair.probability)
            ys.append(pair.converted)
        return {v: (np.array(ps), np.array(ys, dtype=bool)) for v, (ps, ys) in by_version.items()}


def deciles(p: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
    """Mean score and observed rate of ten equal-count groups by score."""
    order = np.argsort(p, kind="mergesort")
    return [
        (float(p[idx].mean()), float(y[idx].mean()))
        for idx in np.array_split(order, 10)
        if len(idx)
    ]


class QualityCollector(Collector):
    """Computes the window's figures when Prometheus scrapes."""

    def __init__(self, tracker: QualityTracker) -> None:
        self.tracker = tracker

    def collect(self) -> Iterator[Any]:
        auc = GaugeMetricFamily(
            "scorer_quality_roc_auc",
            "ROC-AUC of session-start scores against outcomes in the window",
            labels=["model_version"],
        )
        pairs = GaugeMetricFamily(
            "scorer_quality_pairs",
            "Sessions with a session-start score and an outcome in the window",
            labels=["model_version"],
        )
        rate = GaugeMetricFamily(
            "scorer_quality_conversion_rate",
            "Observed conversion rate in the window",
            labels=["model_version"],
        )
        predicted = GaugeMetricFamily(
            "scorer_quality_predicted",
            "Mean session-start score by score decile in the window",
            labels=["model_version", "decile"],
        )
        observed = GaugeMetricFamily(
            "scorer_quality_observed",
            "Observed conversion rate by score decile in the window",
            labels=["model_version", "decile"],
        )
        dist = HistogramMetricFamily(
            "scorer_quality_scores",
            "Distribution of session-start scores in the window",
            labels=["model_version"],
        )
        for version, (p, y) in sorted(self.tracker.window().items()):
            pairs.add_metric([version], len(p))
            rate.add_metric([version], float(y.mean()) if len(y) else 0.0)
            value = roc_auc(p, y)
            if value is not None:
                auc.add_metric([version], value)
            for k, (mean_p, mean_y) in enumerate(deciles(p, y), start=1):
                predicted.add_metric([version, str(k)], mean_p)
                observed.add_metric([version, str(k)], mean_y)
            counts = [(str(b), float((p <= b).sum())) for b in SCORE_BUCKETS]
            counts.append(("+Inf", float(len(p))))
            dist.add_metric([version], counts, sum_value=float(p.sum()))
        yield from (auc, pairs, rate, predicted, observed, dist)


async def consume(
    settings: StreamSettings,
    tracker: QualityTracker,
    *,
    from_beginning: bool = False,
    recalibrator: Recalibrator | None = None,
) -> None:
    """Feed the tracker from the scores and outcomes topics until cancelled; with a
    recalibrator, publish the calibrations it proposes (``stream.recalibration``)."""
    scores = topics.topic_name(topics.SCORES, settings.topic_prefix)
    outcomes = topics.topic_name(topics.OUTCOMES, settings.topic_prefix)
    consumer = AIOKafkaConsumer(
        scores,
        outcomes,
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    reader = CalibrationReader(settings) if recalibrator is not None else None
    producer = AIOKafkaProducer(**client_options(settings), acks="all") if reader else None
    if reader is not None and recalibrator is not None and producer is not None:
        await reader.start()
        await reader.catch_up()
        for record in reader.latest.values():
            recalibrator.on_record(record)
        await producer.start()
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, records in batch.items():
                handle = tracker.on_score if tp.topic == scores else tracker.on_outcome
                for rec in records:
                    try:
                        handle(orjson.loads(rec.value))
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                        log.warning("skipped a record of %s: %s", tp.topic, exc)
            if reader is not None and recalibrator is not None:
                for record in await reader.poll():
                    recalibrator.on_record(record)
                await publish(settings, recalibrator.due(), producer)
    finally:
        await consumer.stop()
        if reader is not None:
            await reader.stop()
        if producer is not None:
            await producer.stop()


def recalibration_rules(settings: StreamSettings) -> RecalibrationRules:
    """The recalibrator's rules from the settings."""
    return RecalibrationRules(
        window=settings.recal_window,
        min_outcomes=settings.recal_min_outcomes,
        min_conversions=settings.recal_min_conversions,
        every=settings.recal_every,
        max_step=settings.recal_max_step,
        alert_shift=settings.recal_alert_shift,
        settle_s=settings.session_gap_s + 7200.0,
    )


def run_quality(settings: StreamSettings, *, from_beginning: bool = False) -> int:
    """Serve the online-quality metrics (and recalibrate) until stopped."""
    recalibrator = Recalibrator(recalibration_rules(settings)) if settings.recalibrate else None
    tracker = QualityTracker(
        window_s=settings.quality_window_s,
        on_pair=None if recalibrator is None else recalibrator.observe,
        on_event_time=None if recalibrator is None else recalibrator.saw_event_time,
    )
    registry = CollectorRegistry()
    registry.register(QualityCollector(tracker))
    if recalibrator is not None:
        registry.register(CalibrationCollector(recalibrator))
    start_http_server(settings.quality_metrics_port, addr=settings.metrics_host, registry=registry)
    log.info(
        "online quality on %s:%d, window %.0f s; online recalibration %s",
        settings.metrics_host,
        settings.quality_metrics_port,
        settings.quality_window_s,
        "on" if recalibrator is not None else "off",
    )

    async def main() -> None:
        await ensure_topics(settings)
        await consume(settings, tracker, from_beginning=from_beginning, recalibrator=recalibrator)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0
