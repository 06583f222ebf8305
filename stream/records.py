"""What the processor's parts take in, hand back and share.

A ``Record`` is one consumed Kafka record; an ``Output`` is what a batch produced
(events to publish, dead letters, counts); ``Context`` is what every part of the
processor works with: the model in use, the store, the session cache and the gate.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from artifact import ConversionModel
from contracts import limits
from stream.cache import SessionCache
from stream.gate import SessionGate
from stream.state import RedisStore

log = logging.getLogger(__name__)


@dataclass
class Record:
    """One consumed Kafka record."""

    value: bytes | None
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    timestamp_ms: float | None = None  # the Kafka record's timestamp


@dataclass
class Output:
    """What a batch produced: events to publish, sessions to release, and counts."""

    scores: list[tuple[str, bytes]] = field(default_factory=list)  # (session_id, JSON)
    outcomes: list[tuple[str, bytes]] = field(default_factory=list)  # (session_id, JSON)
    leads: list[tuple[str, bytes]] = field(default_factory=list)  # (session_id, JSON)
    # leads made by this batch (not copies published again), by tier name
    new_leads: collections.Counter[str] = field(default_factory=collections.Counter)
    unexplained: int = 0  # Warm and Hot scores left without reasons (stream/leads.py)
    tiers: list[int] = field(default_factory=lambda: [0, 0, 0])  # scores made, by tier code
    # sessions to release after publishing, each with its partition
    released: dict[str, int] = field(default_factory=dict)
    dead_letters: list[tuple[str, bytes]] = field(default_factory=list)  # (stage, JSON)
    refusals: collections.Counter[tuple[str, str]] = field(
        default_factory=collections.Counter
    )  # dead letters by (stage, kind)
    duplicates: int = 0
    parked: int = 0
    out_of_order: int = 0
    late: int = 0
    triggers: dict[str, int] = field(default_factory=dict)  # scores by trigger
    event_ts_ms: list[float] = field(default_factory=list)  # Kafka timestamps of scored events
    # sessions to mark closed once published, by partition
    closed: dict[int, list[str]] = field(default_factory=dict)

    def score(self, sid: str, payload: bytes, trigger: str) -> None:
        """Add a score event to publish."""
        self.scores.append((sid, payload))
        self.triggers[trigger] = self.triggers.get(trigger, 0) + 1

    def refuse(self, record: Record, stage: str, error: str, kind: str = "invalid") -> None:
        """Add a dead letter for a record that could not be processed, and log it."""
        log.warning(
            "dead letter from %s[%d]@%d at %s: %s",
            record.topic,
            record.partition,
            record.offset,
            stage,
            error,
        )
        self.dead_letters.append((stage, dead_letter(record, stage, error, kind)))
        self.refusals[(stage, kind)] += 1


@dataclass
class Context:
    """What the processor's parts share.

    ``model`` is read at each use: a reload replaces it here for every part at once.
    """

    model: ConversionModel
    store: RedisStore
    cache: SessionCache  # what Redis holds of this worker's sessions (stream/cache.py)
    gate: SessionGate  # sessions a hits batch or a close round works on (stream/gate.py)
    reasons: bool = True  # explain Warm and Hot scores (stream/leads.py)


def dead_letter(record: Record, stage: str, error: str, kind: str = "invalid") -> bytes:
    """Describe a record that could not be processed, with its original bytes.

    The letter always fits its topic: it keeps at most
    ``DEAD_LETTER_ORIGINAL_MAX_BYTES`` of the original (``original_truncated`` says when
    it was cut; ``original_bytes`` and ``original_sha256`` are the whole record's), a
    key of at most ``ID_MAX_CHARS`` and an error of at most ``ERROR_MAX_CHARS``.
    """
    raw = record.value or b""
    kept = raw[: limits.DEAD_LETTER_ORIGINAL_MAX_BYTES]
    key = None if record.key is None else record.key[: limits.ID_MAX_CHARS]
    return orjson.dumps(
        {
            "source_topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": None if key is None else key.decode("utf-8", "replace"),
            "stage": stage,
            "kind": kind,
            "error": error[: limits.ERROR_MAX_CHARS],
            "original_base64": base64.b64encode(kept).decode(),
            "original_text": kept.decode("utf-8", "replace"),
            "original_bytes": len(raw),
            "original_sha256": hashlib.sha256(raw).hexdigest(),
            "original_truncated": len(kept) < len(raw),
            "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
    )


def converted(outcome: bytes | None) -> bool:
    """Whether an outcome event says the session converted."""
    return outcome is not None and b'"outcome":"converted"' in outcome


def counts(records: Sequence[Record]) -> dict[int, int]:
    """Count records by partition."""
    return dict(collections.Counter(r.partition for r in records))


def failure(exc: BaseException) -> str:
    """An exception as a dead letter's error: its type and a bounded message."""
    return f"{type(exc).__name__}: {str(exc)[: limits.ERROR_MAX_CHARS - 60]}"


class OutputTooLarge(ValueError):
    """An event the worker made is larger than any event it publishes may be."""


def bounded(payload: bytes) -> bytes:
    """Return an event to publish, or raise when it is over ``OUTPUT_MAX_BYTES``."""
    if len(payload) > limits.OUTPUT_MAX_BYTES:
        raise OutputTooLarge(f"event of {len(payload)} bytes, more than {limits.OUTPUT_MAX_BYTES}")
    return payload
