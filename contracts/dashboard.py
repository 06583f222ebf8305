"""The dashboard's keys in Redis: what the worker keeps up to date and the API reads.

On Redis Cluster each input partition keeps its share under its own hash tag
(``contracts.keys.Layout.dash``), written in the same atomic call as its sessions; on a
single Redis all partitions count in partition 0's. The API adds the partitions up. Per
time bucket of session starts (event time) a hash of totals and per-channel figures,
``:m5:<n>`` (5 minutes), ``:h:<n>`` (hours), ``:d:<n>`` (days) and ``:all``; ``:hot``, the
open, unconverted sessions by current probability; ``:meta`` (open sessions, stream
time); ``:rate:<minute>``, events and scores per wall-clock minute. Under a tag of its
own, ``:workers``, each worker's status. A session's own figures (its channel, start,
latest probability) are fields of its session hash.
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
# The hot set's first member, at score -inf, never a session (session ids are at most 200
# characters of [0-9A-Za-z._:-]; this has a space). Longer than Redis's
# zset-max-listpack-value (64 bytes by default), it makes Redis keep the set as a skip
# list from its first write: in the compact listpack encoding every insert reads every
# member's score, which cost Redis a tenth of its instructions on small hot sets.
HOT_ANCHOR = "(anchor) keeps this sorted set in its skiplist encoding; not a session" + "." * 8
TRAJECTORY = 30  # probabilities kept per session for its sparkline
RATE_TTL_S = 2 * 3600
WORKER_TTL_S = 60


def channel_value(value: object) -> str:
    """The dashboard's name of one channel column's value: ``(none)`` when it is missing
    (None, empty, or NaN as pandas reads an empty CSV cell), otherwise its text with
    ``|`` made ``/`` (the bar separates fields in the dashboard's hashes)."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return NONE_VALUE
    return str(value).replace("|", "/")


def minute(wall_s: float | None = None) -> int:
    """Return the number of a wall-clock minute (the now's, by default)."""
    return math.floor((time.time() if wall_s is None else wall_s) / 60)


def minute_key(dash: str, number: int) -> str:
    """Return a partition's hash of events and scores in one wall-clock minute."""
    return f"{dash}:rate:{number}"


def workers_key(prefix: str) -> str:
    """Return the hash of the workers' status: lag, model version, when."""
    return f"{prefix}:{{dash}}:workers"
