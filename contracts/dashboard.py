"""The dashboard's keys in Redis: what the worker keeps up to date and the API reads.

Under one hash tag, ``<prefix>:{dash}``: per time bucket of session starts (event time)
a hash of totals and per-channel figures, ``:m5:<n>`` (5 minutes), ``:h:<n>`` (hours),
``:d:<n>`` (days) and ``:all``; ``:hot``, the open, unconverted sessions by current
probability; ``:meta`` (open sessions, stream time); ``:rate:<minute>``, events and
scores per wall-clock minute; ``:workers``, each worker's status. A session's own
record is under its hash tag (``contracts.keys.dashboard_session_key``).
"""

from __future__ import annotations

import math
import time

DIMENSIONS = ("utm_medium", "utm_source", "utm_campaign")
NONE_VALUE = "(none)"
M5_MS = 5 * 60 * 1000
HOUR_MS = 3600 * 1000
DAY_MS = 24 * HOUR_MS
HOT_MAX = 500  # the hot set keeps this many sessions
TRAJECTORY = 30  # probabilities kept per session for its sparkline
RATE_TTL_S = 2 * 3600
WORKER_TTL_S = 60


def dash_prefix(prefix: str) -> str:
    """Return the prefix of the dashboard's keys (one hash tag: one Cluster slot)."""
    return f"{prefix}:{{dash}}"


def minute_key(prefix: str, wall_s: float | None = None) -> str:
    """Return the hash of events and scores in one wall-clock minute."""
    minute = math.floor((time.time() if wall_s is None else wall_s) / 60)
    return f"{dash_prefix(prefix)}:rate:{minute}"


def workers_key(prefix: str) -> str:
    """Return the hash of the workers' status: lag, model version, when."""
    return f"{dash_prefix(prefix)}:workers"
