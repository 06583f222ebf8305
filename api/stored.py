"""Where the API finds what the stream worker stored in Redis.

The worker records its key layout (``contracts.keys.layout_key``): the partition count of
its input topics, from which a session's keys follow. A session is looked for on the
partition Kafka's default partitioner gives its id; where it is not there (a producer
that partitions otherwise), on every partition.
"""

from __future__ import annotations

import time
from typing import Any

from contracts import keys

LAYOUT_REFRESH_S = 10.0  # how long a layout read is used before it is read again


class Layouts:
    """The worker's key layout, read from Redis and kept for a few seconds."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._layout: keys.Layout | None = None
        self._read_at = -LAYOUT_REFRESH_S

    async def get(self, redis: Any) -> keys.Layout | None:
        """Return the layout, or None while no worker of this layout has recorded one."""
        now = time.monotonic()
        if self._layout is None or now - self._read_at >= LAYOUT_REFRESH_S:
            found = await redis.hgetall(keys.layout_key(self.prefix))
            version, raw = found.get(b"version"), found.get(b"partitions") or b""
            self._read_at = now
            partitions = int(raw) if raw.isdigit() else 0
            if version != str(keys.LAYOUT_VERSION).encode() or partitions < 1:
                self._layout = None
            elif self._layout is None or self._layout.partitions != partitions:
                self._layout = keys.Layout(self.prefix, partitions)
        return self._layout


def candidates(layout: keys.Layout, session_id: str) -> list[int]:
    """The partitions to look for a session in, the likeliest first."""
    first = layout.partition_of(session_id)
    return [first, *(p for p in range(layout.partitions) if p != first)]


async def find(
    redis: Any, layout: keys.Layout, session_id: str, field: str
) -> tuple[int, bytes] | None:
    """Return the partition of a session's hash and one of its fields' value, if stored."""
    order = candidates(layout, session_id)
    value = await redis.hget(layout.session(order[0], session_id), field)
    if value is not None:
        return order[0], value
    if len(order) == 1:
        return None
    pipe = redis.pipeline(transaction=False)
    for p in order[1:]:
        pipe.hget(layout.session(p, session_id), field)
    for p, value in zip(order[1:], await pipe.execute(), strict=True):
        if value is not None:
            return p, value
    return None
