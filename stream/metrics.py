"""Prometheus metrics of the worker, served on ``SCORER_METRICS_PORT`` (0: not served) of
``SCORER_METRICS_HOST`` (127.0.0.1 unless configured otherwise).

Every series starts with ``scorer_worker_``. Counters count events once per delivery:
a batch delivered again after a crash is counted again, and its repeats show up as
duplicates.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WorkerMetrics:
    """The worker's counters, histograms and gauges, in a registry of their own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events_in = Counter(
            "scorer_worker_events_in_total",
            "Events consumed, by input topic",
            ["topic"],
            registry=r,
        )
        self.scores_out = Counter(
            "scorer_worker_scores_out_total",
            "Score events published, by trigger (session_start, hit, session_end)",
            ["trigger"],
            registry=r,
        )
        self.outcomes_out = Counter(
            "scorer_worker_outcomes_out_total",
            "Outcome events published, by outcome (converted, not_converted)",
            ["outcome"],
            registry=r,
        )
        self.leads = Counter(
            "scorer_worker_leads_total",
            "Leads made, by tier (warm, hot); a copy published again after a crash is not counted",
            ["tier"],
            registry=r,
        )
        self.unexplained = Counter(
            "scorer_worker_unexplained_total",
            "Warm and Hot scores published without reasons: explaining them failed",
            registry=r,
        )
        self.tiers = Counter(
            "scorer_worker_scores_by_tier_total",
            "Scores made, by tier (cold, warm, hot); copies published again are not counted",
            ["tier"],
            registry=r,
        )
        for tier in ("warm", "hot"):
            self.leads.labels(tier)
        self.dead_letters = Counter(
            "scorer_worker_dead_letters_total",
            "Events sent to the dead-letter topic, by the stage that failed",
            ["stage"],
            registry=r,
        )
        self.refused = Counter(
            "scorer_worker_refused_total",
            "Events refused (sent to the dead-letter topic), by stage and kind of refusal",
            ["stage", "kind"],
            registry=r,
        )
        self.exits = Counter(
            "scorer_worker_exits_total",
            "Earlier exits of the worker on this data dir, by reason (redis, kafka, bug)",
            ["reason"],
            registry=r,
        )
        self.started = Gauge(
            "scorer_worker_started_seconds",
            "When this worker process started (Unix time)",
            registry=r,
        )
        self.redis_losses = Counter(
            "scorer_worker_redis_losses_total",
            "Writes refused because Redis held less than this worker had written to it",
            registry=r,
        )
        self.rebuilt_partitions = Counter(
            "scorer_worker_rebuilt_partitions_total",
            "Input partitions read again because Redis's state ended before the worker's place",
            registry=r,
        )
        self.reread = Counter(
            "scorer_worker_reread_records_total",
            "Input records read again to rebuild what Redis lost",
            registry=r,
        )
        self.duplicates = Counter(
            "scorer_worker_duplicates_total",
            "Events already applied (redelivered or sent twice), by input topic",
            ["topic"],
            registry=r,
        )
        self.parked = Counter(
            "scorer_worker_parked_hits_total",
            "Hits that arrived before their session row and waited for it",
            registry=r,
        )
        self.out_of_order = Counter(
            "scorer_worker_out_of_order_hits_total",
            "Hits applied after a hit with a higher hit_number of the same session",
            registry=r,
        )
        self.late = Counter(
            "scorer_worker_late_hits_total",
            "Hits of a session that had already been closed for inactivity",
            registry=r,
        )
        self.closed = Counter(
            "scorer_worker_sessions_closed_total",
            "Sessions closed after the inactivity gap",
            registry=r,
        )
        self.batch_seconds = Histogram(
            "scorer_worker_batch_seconds",
            "Processing time of one micro-batch, from taking it to queuing its output for Kafka",
            ["agent"],  # the input: sessions or hits (named when they were Faust agents)
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "scorer_worker_batch_events",
            "Events per micro-batch",
            ["agent"],
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000),
            registry=r,
        )
        self.end_to_end = Histogram(
            "scorer_worker_event_to_score_seconds",
            "From an event's Kafka timestamp to its score being published",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "scorer_worker_consumer_lag",
            "Messages not yet consumed, by input topic and partition",
            ["topic", "partition"],
            registry=r,
        )
        self.paused = Gauge(
            "scorer_worker_paused_partitions",
            "Session partitions held back because their hits are behind in event time",
            registry=r,
        )
        self.pauses = Counter(
            "scorer_worker_partition_pauses_total",
            "Times a session partition was held back for its hits to catch up",
            registry=r,
        )
        self.open_sessions = Gauge(
            "scorer_worker_open_sessions",
            "Sessions waiting for their outcome, in this worker's partitions",
            registry=r,
        )
        self.model_info = Gauge(
            "scorer_worker_model_info",
            "The model version scoring events (value 1)",
            ["version"],
            registry=r,
        )
        self.model_reloads = Counter(
            "scorer_worker_model_reloads_total",
            "Attempts to load a newly deployed artifact, by result (loaded, failed, or "
            "digest_mismatch: refused, its SHA-256 is not the pinned one)",
            ["result"],
            registry=r,
        )
        self.calibration_shift = Gauge(
            "scorer_worker_calibration_shift",
            "Shift of the log-odds by the online calibration in use (0: as shipped), by "
            "model version and calibration id",
            ["version", "calibration_id"],
            registry=r,
        )

    def use_calibration(self, version: str, calibration_id: str, shift: float) -> None:
        """Mark the online calibration in use."""
        self.calibration_shift.clear()
        self.calibration_shift.labels(version=version, calibration_id=calibration_id).set(shift)

    def restarted(self, exits: ExitLog) -> None:
        """Count the exits recorded before this start, and mark the start."""
        for reason, n in exits.counts().items():
            self.exits.labels(reason).inc(n)
        self.started.set(time.time())

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve the metrics over HTTP on host (0.0.0.0: every interface; port 0: nowhere).

        Returns the server (None when not served), which the worker leaves running.
        """
        if not port:
            return None
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server

    def use_model(self, version: str) -> None:
        """Mark the model version in use."""
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)


class ExitLog:
    """The reasons the worker exited, kept in a small JSON file in its data dir.

    A process that exits cannot report its own exit: the next start reads the file and
    counts them (``scorer_worker_exits_total``), so a crash loop shows as a counter that
    climbs by one with every restart.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def counts(self) -> dict[str, int]:
        """Return the exits recorded so far, by reason (none if the file is unreadable)."""
        try:
            data = json.loads(self.path.read_text())
            return {str(k): int(v) for k, v in data.get("exits", {}).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}

    def record(self, reason: str, detail: str) -> None:
        """Add one exit; best effort, since the process is about to end."""
        counts = self.counts()
        counts[reason] = counts.get(reason, 0) + 1
        body = {
            "exits": counts,
            "last": {"reason": reason, "detail": detail[:500], "at": time.time()},
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(body))
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("exit reason not recorded in %s: %s", self.path, exc)
