"""The bounds every input value is held to, by the worker and by the API alike.

The website's events are public input: each bound keeps what one record can make the
service do or hold small. A record outside them is refused with its reason (a dead
letter on the stream, a 422 from the API); docs/worker.md lists them.
"""

from __future__ import annotations

import re

# Session and client ids: the real ones are digits and dots (``<int>.<ts>.<ts>``). They
# go into Redis keys inside a hash tag, so braces and other specials are refused.
ID_MAX_CHARS = 200
ID_PATTERN = r"^[0-9A-Za-z._:-]+$"
ID_RE = re.compile(ID_PATTERN)

# A whole Kafka record (JSON): real rows are well under 2 KB.
RECORD_MAX_BYTES = 64 * 1024
# Every string field of a session row (the API's own limits are tighter per field).
SESSION_FIELD_MAX_CHARS = 200
# Every string field of a hit; page paths and referrers carry query strings.
HIT_FIELD_MAX_CHARS = 4096

VISIT_NUMBER_MAX = 100_000  # real data: 1..564
HIT_NUMBER_MAX = 100_000  # real data: 1..500
# Milliseconds since the session's start: a session ends by the next midnight at most.
HIT_TIME_MAX_MS = 86_400_000.0

# Visit dates: none before Google Analytics existed. Event time runs at most this far
# ahead of the worker's wall clock (clock skew): a session that starts later is
# refused, and a partition's event time (which closes idle sessions) never moves past
# it, whatever a hit's hit_time says.
VISIT_DATE_MIN = "2005-01-01"
FUTURE_SLACK_S = 3600

# Redis: hits kept waiting for their session's row, per session.
PARKED_HITS_MAX = 1000
# Dashboard: a time bucket's hash takes new channel values until it holds this many
# fields (three per value: sessions, probability sum, conversions; the real data's
# all-time bucket needs about 2,300); later new values count under OTHER_VALUE.
DASH_BUCKET_FIELDS_MAX = 10_000
OTHER_VALUE = "(other)"

# A dead letter keeps at most this much of the original record (with its full length
# and SHA-256), and at most this much of an error message.
DEAD_LETTER_ORIGINAL_MAX_BYTES = 16 * 1024
ERROR_MAX_CHARS = 500
# Any event the worker publishes: far below Kafka's 1 MB message limit.
OUTPUT_MAX_BYTES = 256 * 1024


def shown(value: object, limit: int = 60) -> str:
    """Return a value as an error message may show it: never more than about ``limit`` chars.

    A long string keeps its head and says its length; a list or an object says its type
    and size only (its repr could be as large as the record).
    """
    if isinstance(value, str | bytes):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value)} chars)"
    if isinstance(value, list | dict):
        return f"a JSON {'array' if isinstance(value, list) else 'object'} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"
