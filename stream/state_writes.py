"""A batch's writes: new sessions, hits with their scores, marks, offsets, in one call."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

import numpy as np

from contracts import keys
from contracts.dashboard import minute
from features.hits import empty_state
from stream.redis_calls import Offsets, ScriptCalls, WriteCall
from stream.session_state import HitWrite, SessionWrite

NO_CHANNEL = "(none)"
_PACKED_EMPTY = keys.pack_hit_state(empty_state().tolist())  # the counters before any hit


class StateWrites:
    """Writes a batch's sessions, hits, scores, marks and offsets atomically."""

    def __init__(self, client: Any, layout: keys.Layout, calls: ScriptCalls, ttl_s: int) -> None:
        self.r = client
        self.layout = layout
        self.calls = calls
        # Numbers the scripts hand straight to Redis go as text: a Lua number given to
        # redis.call is formatted with snprintf first, a tenth of Redis's time in a probe.
        self.ttl_text = str(ttl_s)
        self.layout_recorded = False  # the layout is recorded in Redis (``record_layout``)

    async def record_layout(self) -> None:
        """Record the key layout where the API looks for it (``keys.layout_key``).

        Done before the first write: the API finds a session's keys by the partition
        count recorded here.
        """

        async def run() -> Any:
            return await self.r.hset(
                keys.layout_key(self.layout.prefix),
                mapping={"version": keys.LAYOUT_VERSION, "partitions": self.layout.partitions},
            )

        await self.calls.retry("layout", run)
        self.layout_recorded = True

    async def send_write(
        self,
        sessions: Sequence[SessionWrite],
        hits: Sequence[HitWrite],
        watermarks: dict[tuple[str, int], tuple[float, float]] | None = None,
        events: int | Mapping[int, int] = 0,
        offsets: Offsets | None = None,
    ) -> Awaitable[set[str]]:
        """Send a batch's sessions, states, applied hits and scores, to be written
        atomically; return what to await for them to land.

        Open sessions are kept in their partition's sorted set, scored by their latest
        event time (only ever raised), for the inactivity close; ``watermarks`` maps an
        input kind and partition to its (event time, wall time) high-water marks in ms.
        The dashboard's aggregates move in the same call; ``events`` is the batch's
        number of records by partition (or all in partition 0), for its events per
        minute. ``offsets`` raises the applied offsets of input partitions
        (``Layout.applied``): the state now reflects every record before them. The
        awaited result raises RedisLost, having written nothing, if Redis lost writes;
        else it is the sessions whose rows Redis held already (none of their row's
        writes happened).
        """
        if not sessions and not hits and not watermarks and not events and not offsets:
            return _nothing()
        if not self.layout_recorded:
            await self.record_layout()
        batch = WriteCall(self.calls)
        layout = self.layout
        opened: dict[int, list[Any]] = {}
        scores: dict[int, int] = {}
        for s in sessions:
            part = s.partition
            ops, d = batch.ops(part)
            values = s.channel or [NO_CHANNEL] * 5
            entry = s.history if s.history is not None else s.score_json
            row = keys.StoredRow(
                s.start,
                s.client_id,
                s.vector.astype(np.float32).tobytes(),
                s.event_ms,
                tuple(values),
            )
            probability = repr(float(s.probability))
            ops.add(
                "S",
                layout.session(part, s.session_id),
                d,
                s.session_id,
                probability,
                _num(s.event_ms),
                *values[:3],
                keys.pack_row(row),
                _PACKED_EMPTY,
                s.history_field,
                entry,
                *((keys.LEAD_FIELD, str(s.lead_tier)) if s.lead_tier else ()),
            )
            opened.setdefault(part, []).extend((repr(s.event_ms), s.session_id))
            scores[part] = scores.get(part, 0) + 1
        for h in hits:
            part = h.partition
            ops, d = batch.ops(part)
            if not h.scores:
                key = layout.session(part, h.session_id)
                ops.add("HSET", key, keys.HIT_STATE_FIELD, keys.pack_hit_state(h.state.tolist()))
                ops.add("EXPIRE", key, self.ttl_text)
                continue
            entries = h.entries or [json for _, json in h.scores]
            names = [name for name, _ in h.scores]
            fields = [x for pair in zip(names[1:], entries[1:], strict=True) for x in pair]
            if h.outcome is not None:
                fields += ["outcome", h.outcome]
            if h.lead_tier:
                fields += [keys.LEAD_FIELD, str(h.lead_tier)]
            hot = not h.closed and not h.converted and h.outcome is None
            ops.add(
                "H",
                layout.session(part, h.session_id),
                d,
                h.session_id,
                repr(float(h.probability)),
                int(h.outcome is not None),
                int(hot),
                names[0],
                entries[0],
                keys.pack_hit_state(h.state.tolist()),
                names[-1],
                int(h.refresh_ttl),
                *fields,
            )
            scores[part] = scores.get(part, 0) + len(h.scores)
            if not h.closed:
                opened.setdefault(part, []).extend((repr(h.event_ms), h.session_id))
        for part, members in opened.items():
            ops, _ = batch.ops(part)
            ops.add("ZADD", layout.open_sessions(part), "GT", *members)
        for (kind, part), (event_ms, wall_ms) in (watermarks or {}).items():
            ops, _ = batch.ops(part)
            ops.add(
                "HSET",
                layout.watermark(part),
                f"{kind}_event_ms",
                repr(event_ms),
                f"{kind}_wall_ms",
                repr(wall_ms),
            )
        counts = {0: events} if isinstance(events, int) else dict(events)
        now = minute()
        for part in set(counts) | set(scores):
            n_events, n_scores = counts.get(part, 0), scores.get(part, 0)
            if n_events or n_scores:
                ops, d = batch.ops(part)
                ops.add("R", None, d, now, n_events, n_scores)
        for (kind, part), offset in (offsets or {}).items():
            ops, _ = batch.ops(part)
            ops.add("AMAX", layout.applied(part), kind, str(offset))
        return await batch.send("write", offsets)


async def _nothing() -> set[str]:
    return set()


def _num(x: float) -> str:
    """A number as text: a whole one without its fraction (cheaper than ``repr``)."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)
