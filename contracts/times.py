"""The service's clocks as text: scored_at in UTC, event times in Moscow time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

MSK = timezone(timedelta(hours=3))  # the site's visit_date/visit_time are Moscow time


def now_iso() -> str:
    """Return the time now, UTC, as an ISO timestamp to the millisecond."""
    return utc_iso(now_ms())


def now_ms() -> int:
    """Return the time now in whole milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def utc_iso(ms: int) -> str:
    """Return whole epoch milliseconds as a UTC ISO timestamp to the millisecond.

    The same text as ``datetime.now(UTC).isoformat(timespec="milliseconds")`` at that
    millisecond; a score's ``scored_at`` is made and kept this way.
    """
    second, milli = divmod(ms, 1000)
    text = datetime.fromtimestamp(second, UTC).isoformat()
    return f"{text[:19]}.{milli:03d}{text[19:]}"


_MSK_OFFSET_S = 3 * 3600  # Moscow has kept UTC+3 all year since 2014
_EPOCH = datetime(1970, 1, 1)
_DATES: dict[int, str] = {}  # day number since the epoch, Moscow time -> its ISO date
_SECONDS: dict[int, str] = {}  # epoch second -> its ISO date and time, Moscow time


def iso_from_ms(ms: float) -> str:
    """Return epoch ms as an ISO timestamp in Moscow time, the site's clock.

    The same text as ``datetime.fromtimestamp(ms / 1000, MSK).isoformat(timespec=
    "milliseconds")``. The worker formats one for nearly every score: each second's
    date and time are made once, with integer arithmetic and one date per day
    (``datetime`` took several times as long).
    """
    second, micros = divmod(round(ms * 1000.0), 1_000_000)
    text = _SECONDS.get(second)
    if text is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
            _DATES.clear()
        day, in_day = divmod(second + _MSK_OFFSET_S, 86_400)
        date = _DATES.get(day)
        if date is None:
            date = _DATES[day] = (_EPOCH + timedelta(days=day)).date().isoformat()
        hour, rest = divmod(in_day, 3600)
        text = _SECONDS[second] = f"{date}T{hour:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{text}.{micros // 1000:03d}+03:00"
