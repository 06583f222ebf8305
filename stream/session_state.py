"""What the store holds of a session, and what a batch writes of one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import msgpack
import numpy as np


@dataclass
class ParkedHit:
    """A hit read before its session row, with where it was read from."""

    session_id: str
    raw: bytes  # the record's value, as consumed
    partition: int = -1
    offset: int = -1
    timestamp_ms: float | None = None

    def pack(self) -> bytes:
        """Encode the hit for the pending list."""
        return msgpack.packb([self.partition, self.offset, self.timestamp_ms, self.raw])

    @classmethod
    def unpack(cls, session_id: str, item: bytes) -> ParkedHit:
        """Decode an entry of the pending list; a bare value is kept as the raw hit."""
        try:
            partition, offset, timestamp_ms, raw = msgpack.unpackb(item)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.UnpackException):
            return cls(session_id, item)
        if not isinstance(raw, bytes) or not isinstance(partition, int):
            return cls(session_id, item)
        return cls(session_id, raw, partition, offset, timestamp_ms)


@dataclass
class SessionState:
    """What the store knows of one session."""

    known: bool  # its session row has been stored
    ready: bool  # its session-start score is published: hits may be applied
    client_id: str | None
    start: str | None
    vector: np.ndarray | None
    state: np.ndarray
    partition: int | None = None
    closed: bool = False  # closed for inactivity
    latest: bytes | None = None  # the latest ScoreEvent JSON (when read: ``has_latest``)
    has_latest: bool = True  # False: the read left the latest score out
    outcome: bytes | None = None  # the OutcomeEvent JSON, once known
    lead_tier: int = 0  # the highest tier it made a lead of (0: none)
    # its utm_medium, utm_source, utm_campaign, device and city, as its row is stored
    channel: tuple[str, ...] | None = None


@dataclass
class SessionWrite:
    """A session row's first appearance: its fields and its session-start score."""

    session_id: str
    client_id: str | None
    start: str
    vector: np.ndarray
    score_json: bytes
    history_field: str
    history: bytes | None = None  # the score's history entry (None: keep the JSON)
    partition: int = 0
    event_ms: float = 0.0
    probability: float = 0.0
    channel: list[str] | None = None  # dashboard.channel_values of its row
    lead_tier: int = 0  # the tier of the lead its start score made (0: none)


@dataclass
class HitWrite:
    """A session's state after a batch of hits, with the scores they produced."""

    session_id: str
    state: np.ndarray
    applied: list[int]
    scores: list[tuple[str, bytes]]  # (history field, ScoreEvent JSON), in order
    partition: int = 0
    event_ms: float = 0.0  # the latest event time among the batch's hits
    outcome: bytes | None = None  # OutcomeEvent JSON when a hit of the batch converted
    closed: bool = False  # a late hit: the session stays closed
    converted: bool = False  # converted in an earlier batch: not hot any more
    refresh_ttl: bool = True  # set the session's TTL again (else it was set lately)
    probability: float = 0.0  # the latest of the batch's scores
    entries: list[bytes] = field(default_factory=list)  # history entries of ``scores``, if any
    lead_tier: int = 0  # the highest tier its scores made a lead of (0: none)
    leads: list[tuple[str, bytes]] = field(default_factory=list)  # (history field, LeadEvent JSON)


@dataclass
class CloseWrite:
    """A session closed for inactivity: its final score and, unless converted, outcome."""

    session_id: str
    score_json: bytes
    history_field: str
    outcome: bytes | None
    history: bytes | None = None  # the final score's history entry (None: keep the JSON)
    partition: int = 0


# Sessions by their input partition: session id -> partition.
Sessions = Mapping[str, int]
