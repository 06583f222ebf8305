"""The Redis key layout, built in one place.

Every key of a session carries the session id in a hash tag (``{...}``), so all of a
session's keys land on one Redis Cluster slot and a Lua script may touch them together.
"""

import struct
from collections.abc import Sequence

KEY_PREFIX = "scorer"
# The hit-state counters in the state hash: one field, the counters packed as float64
# (little-endian) in the order of ``features.hits.STATE_NAMES``. A counter added later
# goes at the end, so a shorter vector stored before reads with the new counter empty.
HIT_STATE_FIELD = "hs"
# States written before the packed field kept each counter in a field of its own,
# ``s:<counter name>``; they are still read where ``hs`` is absent.
STATE_FIELD_PREFIX = "s:"


def state_field(name: str) -> str:
    """Return the state-hash field of one hit-state counter, as states were written before."""
    return f"{STATE_FIELD_PREFIX}{name}"


def pack_hit_state(values: Sequence[float]) -> bytes:
    """Return the ``hs`` field's value for a session's hit-state counters."""
    return struct.pack(f"<{len(values)}d", *values)


def unpack_hit_state(raw: bytes, empty: Sequence[float]) -> list[float]:
    """Return the counters of an ``hs`` field; ``empty`` gives the count and the defaults.

    Counters missing from a shorter vector take their empty values; extra ones are
    dropped.
    """
    n = min(len(raw) // 8, len(empty))
    return [*struct.unpack_from(f"<{n}d", raw), *empty[n:]]


def legacy_hit_state(values: Sequence[bytes | None], empty: Sequence[float]) -> list[float]:
    """Return the counters of a state kept one field per counter (``state_field``).

    ``values`` are those fields in the order of ``empty``; a missing one is empty.
    """
    return [float(v) if v else e for v, e in zip(values, empty, strict=True)]


def session_key(session_id: str, prefix: str = KEY_PREFIX) -> str:
    """Return the hash holding a session's row fields and in-session state."""
    return f"{prefix}:{{{session_id}}}:state"


def pending_hits_key(session_id: str, prefix: str = KEY_PREFIX) -> str:
    """Return the list of hits that arrived before their session's row."""
    return f"{prefix}:{{{session_id}}}:pending"


def latest_score_key(session_id: str, prefix: str = KEY_PREFIX) -> str:
    """Return the string key holding a session's latest score as ScoreEvent JSON."""
    return f"{prefix}:{{{session_id}}}:score"


def score_history_key(session_id: str, prefix: str = KEY_PREFIX) -> str:
    """Return the hash of a session's scores: field ``trigger:hit_number``.

    Each value is the score in compact form (``contracts.history.history_entry``), from which
    its ScoreEvent JSON is made again byte for byte. A redelivered event finds its score
    here and publishes the very same copy again.
    """
    return f"{prefix}:{{{session_id}}}:history"


def open_sessions_key(partition: int, prefix: str = KEY_PREFIX) -> str:
    """Return the sorted set of a partition's open sessions, scored by last event time (ms).

    One set per input partition: the worker that owns the partition closes its sessions.
    """
    return f"{prefix}:{{open-{partition}}}"


def watermark_key(partition: int, prefix: str = KEY_PREFIX) -> str:
    """Return the hash of a partition's event-time marks: ``{sessions,hits}_{event,wall}_ms``."""
    return f"{prefix}:{{open-{partition}}}:watermark"


def applied_key(partition: int, prefix: str = KEY_PREFIX) -> str:
    """Return the hash of the input offsets a partition's stored state reflects.

    Fields ``sessions`` and ``hits``: the next offset of that input partition; every
    record before it is applied in Redis (written with the state, in the same call).
    A Redis that lost writes has a lower offset, or none, and the worker reads the
    input again from there (``stream/recovery.py``).
    """
    return f"{prefix}:{{open-{partition}}}:applied"


def dashboard_session_key(session_id: str, prefix: str = KEY_PREFIX) -> str:
    """Return the hash of what a session contributes to the dashboard's aggregates."""
    return f"{prefix}:{{{session_id}}}:dash"
