"""The live page's hot sessions: each one's channel, hits, trajectory, tier and reasons.

The hot sets (``stream/dashboard.py``) name the open sessions with the highest latest
scores; this reads their session hashes, as the worker keeps them, for what the page
shows of each.
"""

from __future__ import annotations

from typing import Any

import msgpack
import orjson

from contracts import keys
from contracts.dashboard import TRAJECTORY
from contracts.history import latest_from_hash, trajectory
from features.hits import STATE_NAMES, empty_state


async def hot_sessions(
    redis: Any, layout: keys.Layout, entries: list[tuple[float, int, bytes]]
) -> list[dict]:
    """What the page shows of the hot sessions ``entries`` (latest probability, the
    partition whose hot set named it, session id), in their order; those whose state has
    expired are left out."""
    if not entries:
        return []
    # A hot set holds the sessions of the partitions sharing its dashboard (all of them
    # on a single Redis): each is looked for on the partition its id gives, then on the
    # set's own, then on every other at once.
    ids = [sid.decode() for _, _, sid in entries]
    rounds: list[list[list[int]]] = []
    for session_id, (_, shard, _) in zip(ids, entries, strict=True):
        first = layout.partition_of(session_id)
        second = [shard] if shard != first else []
        rest = [p for p in range(layout.partitions) if p not in (first, shard)]
        rounds.append([[first], second, rest])
    replies: list[dict[bytes, bytes]] = [{} for _ in entries]
    for step in range(3):
        wanted = [
            (k, partition)
            for k, tries in enumerate(rounds)
            if not replies[k]
            for partition in tries[step]
        ]
        if not wanted:
            continue
        pipe = redis.pipeline(transaction=False)
        for k, partition in wanted:
            pipe.hgetall(layout.session(partition, ids[k]))
        for (k, _), found in zip(wanted, await pipe.execute(), strict=True):
            if found and not replies[k]:
                replies[k] = found
    out = []
    for (p, _, sid), h in zip(entries, replies, strict=True):
        raw = h.get(keys.ROW_FIELD.encode())
        if raw is None:
            continue  # its session expired; the hot set forgets it at its next update
        row = keys.unpack_row(raw)
        medium, source, campaign, device, city = row.channel
        history = {name: entry for name, entry in h.items() if b":" in name}
        tier, reasons = _why(sid.decode(), h, raw)
        out.append(
            {
                "session_id": sid.decode(),
                "probability": p,
                "utm_medium": medium,
                "utm_source": source,
                "utm_campaign": campaign,
                "device_category": device,
                "geo_city": city,
                "hits": _hits_applied(h.get(keys.HIT_STATE_FIELD.encode())),
                "started_ms": row.start_ms,
                "trajectory": [round(x, 4) for x in trajectory(history, TRAJECTORY)],
                "tier": tier,
                "reasons": reasons,
            }
        )
    return out


# How many of a hot session's reasons the page shows.
HOT_REASONS = 3


def _why(session_id: str, h: dict[bytes, bytes], row: bytes) -> tuple[str, list[dict]]:
    """A hot session's tier and the top reasons of its latest score, as the worker
    published them (none for a Cold score, or one made without reasons)."""
    latest = h.get(keys.LATEST_FIELD.encode())
    entry = h.get(latest) if latest and latest[:1] != b"{" else None
    try:
        found = latest_from_hash(session_id, latest, entry, row)
        score = orjson.loads(found) if found else {}
    except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException):
        return "cold", []  # not a score this code can read: shown without reasons
    reasons = (score.get("reasons") or {}).get("top") or []
    return str(score.get("tier", "cold")), reasons[:HOT_REASONS]


_EMPTY_STATE = empty_state().tolist()
_HITS = STATE_NAMES.index("hits")


def _hits_applied(packed: bytes | None) -> int:
    """The hits applied to a session, from its packed counters."""
    if packed is None:
        return 0
    return int(keys.unpack_hit_state(packed, _EMPTY_STATE)[_HITS])
