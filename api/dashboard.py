"""The marketing dashboard: a live page, its data as JSON, and a server-sent event stream.

Everything it shows is read from the aggregates the worker keeps in Redis
(stream/dashboard.py): a fixed number of bucket hashes per window, the hot set's top
entries and their sessions' records. No key is ever scanned.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, Security
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.security import APIKeyHeader

from contracts import keys
from contracts.dashboard import (
    DAY_MS,
    DIMENSIONS,
    HOUR_MS,
    M5_MS,
    TRAJECTORY,
    dash_prefix,
    workers_key,
)
from contracts.history import trajectory

PAGE = Path(__file__).with_name("static") / "dashboard.html"
WORKER_FRESH_MS = 30_000.0  # a worker status older than this is not counted
CHANNEL_ROWS = 100  # rows per dimension, the largest by sessions
RATE_MINUTES = 15


class Window(StrEnum):
    """How far back the channel table looks, in the stream's event time."""

    hour = "hour"
    day = "day"
    all = "all"


# window -> (bucket name, bucket length in ms, buckets): channels; and the chart's
WINDOW_BUCKETS = {Window.hour: ("m5", M5_MS, 12), Window.day: ("h", HOUR_MS, 24)}
CHART_BUCKETS = {
    Window.hour: ("m5", M5_MS, 12),
    Window.day: ("h", HOUR_MS, 24),
    Window.all: ("d", DAY_MS, 30),
}

_header = APIKeyHeader(name="X-API-Key", auto_error=False)


async def _require_key(
    request: Request,
    header: Annotated[str | None, Security(_header)],
    key: Annotated[str | None, Query(description="the API key, for a browser")] = None,
) -> None:
    """The page and its data want the API key when one is set: header or ``?key=``."""
    expected = request.app.state.settings.api_key
    if expected and expected not in (header, key):
        raise HTTPException(status_code=401, detail="missing or wrong API key (X-API-Key or ?key=)")


router = APIRouter(dependencies=[Depends(_require_key)], tags=["dashboard"])


STATS = ("n", "p", "pu", "c")  # a bucket's figures; other fields are bookkeeping


def _f(value: bytes | None) -> float:
    return float(value) if value else 0.0


def _merge(hashes: list[dict[bytes, bytes]]) -> tuple[dict[str, float], dict[str, dict]]:
    """Add up bucket hashes: totals and, per dimension and value, n, p and c.

    ``pu`` (the probabilities in millionths) counts into p, as do the float sums ``p``
    of buckets written before.
    """
    totals = {"n": 0.0, "p": 0.0, "c": 0.0}
    by_dim: dict[str, dict[str, dict[str, float]]] = {d: {} for d in DIMENSIONS}
    for h in hashes:
        for raw_field, raw_value in h.items():
            parts = raw_field.decode().split("|", 2)
            if parts[0] not in STATS:
                continue  # the bucket's own bookkeeping (its count of named values)
            value = float(raw_value)
            if parts[0] == "pu":
                parts[0], value = "p", value / 1e6
            if len(parts) == 1:
                totals[parts[0]] = totals.get(parts[0], 0.0) + value
            elif len(parts) == 3 and parts[1] in by_dim:
                row = by_dim[parts[1]].setdefault(parts[2], {"n": 0.0, "p": 0.0, "c": 0.0})
                row[parts[0]] += value
    return totals, by_dim


def _channel_row(value: str, s: dict[str, float]) -> dict[str, Any]:
    n, p, c = s["n"], max(0.0, s["p"]), s["c"]
    return {
        "value": value,
        "sessions": int(round(n)),
        "mean_probability": p / n if n else None,
        "expected": p,
        "observed": int(round(c)),
        "observed_to_expected": c / p if p > 0 else None,
    }


def _bucket_keys(prefix: str, name: str, size_ms: float, count: int, now_ms: float) -> list[str]:
    last = math.floor(now_ms / size_ms)
    return [f"{prefix}:{name}:{i}" for i in range(last - count + 1, last + 1)]


async def read_dashboard(
    redis: Any, key_prefix: str, window: Window = Window.day, hot: int = 20
) -> dict[str, Any]:
    """Read what the page shows from Redis (a fixed number of keys)."""
    prefix = dash_prefix(key_prefix)
    meta = await redis.hgetall(f"{prefix}:meta")
    now_ms = _f(meta.get(b"now_ms"))
    wall_min = math.floor(time.time() / 60)
    minutes = list(range(wall_min - RATE_MINUTES + 1, wall_min + 1))

    if window is Window.all:
        channel_keys = [f"{prefix}:all"]
    else:
        channel_keys = _bucket_keys(prefix, *WINDOW_BUCKETS[window], now_ms)
    chart_name, chart_ms, chart_count = CHART_BUCKETS[window]
    chart_keys = _bucket_keys(prefix, chart_name, chart_ms, chart_count, now_ms)

    pipe = redis.pipeline(transaction=False)
    for k in channel_keys:
        pipe.hgetall(k)
    for k in chart_keys:
        pipe.hmget(k, "n", "p", "pu", "c")
    for m in minutes:
        pipe.hmget(f"{prefix}:rate:{m}", "events", "scores")
    pipe.hgetall(workers_key(key_prefix))
    pipe.zrevrange(f"{prefix}:hot", 0, max(0, hot - 1), withscores=True)
    results = await pipe.execute()
    channel_h = results[: len(channel_keys)]
    at = len(channel_keys)
    chart_h = results[at : at + len(chart_keys)]
    at += len(chart_keys)
    rate_h = results[at : at + len(minutes)]
    workers_h, hot_z = results[-2], results[-1]

    totals, by_dim = _merge(channel_h)
    channels = {
        dim: [
            _channel_row(v, s)
            for v, s in sorted(rows.items(), key=lambda kv: -kv[1]["n"])[:CHANNEL_ROWS]
        ]
        for dim, rows in by_dim.items()
    }

    hot_sessions = await _hot(redis, key_prefix, hot_z)

    now_wall_ms = time.time() * 1000.0
    workers = []
    for name, raw in workers_h.items():
        status = orjson.loads(raw)
        if now_wall_ms - status.get("at_ms", 0.0) <= WORKER_FRESH_MS:
            workers.append({"worker": name.decode(), **status})
    workers.sort(key=lambda w: w["worker"])

    return {
        "window": window.value,
        "generated_at_ms": now_wall_ms,
        "now": {
            "event_time_ms": now_ms or None,
            "active_sessions": int(_f(meta.get(b"active"))),
            "events_per_minute": [int(_f(e)) for e, _ in rate_h],
            "scores_per_minute": [int(_f(s)) for _, s in rate_h],
            "minutes": [m * 60_000 for m in minutes],
            "consumer_lag": sum(int(w.get("lag", 0)) for w in workers) if workers else None,
            "workers": workers,
            "model_versions": sorted({w["model_version"] for w in workers}),
        },
        "totals": _channel_row("all", totals),
        "channels": channels,
        "hot": hot_sessions,
        "chart": [
            {
                "start_ms": float(k.rsplit(":", 1)[1]) * chart_ms,
                "sessions": int(_f(n)),
                "expected": max(0.0, _f(p) + _f(pu) / 1e6),
                "observed": int(_f(c)),
            }
            for k, (n, p, pu, c) in zip(chart_keys, chart_h, strict=True)
        ],
        "chart_bucket_ms": chart_ms,
    }


async def _hot(redis: Any, key_prefix: str, entries: list[tuple[bytes, float]]) -> list[dict]:
    if not entries:
        return []
    fields = ("m", "s", "c", "dev", "city", "hits", "ms")
    pipe = redis.pipeline(transaction=False)
    for sid, _ in entries:
        session = sid.decode()
        pipe.hmget(keys.dashboard_session_key(session, key_prefix), *fields)
        pipe.hgetall(keys.score_history_key(session, key_prefix))  # its trajectory
    replies = await pipe.execute()
    out = []
    for k, (sid, p) in enumerate(entries):
        rec, history = replies[2 * k], replies[2 * k + 1]
        if rec[0] is None:
            continue  # its record expired; the hot set forgets it at its next update
        m, s, c, dev, city, hits, ms = (None if x is None else x.decode() for x in rec)
        out.append(
            {
                "session_id": sid.decode(),
                "probability": p,
                "utm_medium": m,
                "utm_source": s,
                "utm_campaign": c,
                "device_category": dev,
                "geo_city": city,
                "hits": int(float(hits or 0)),
                "started_ms": float(ms or 0),
                "trajectory": [round(x, 4) for x in trajectory(history, TRAJECTORY)],
            }
        )
    return out


def _prefix(request: Request) -> str:
    prefix: str = request.app.state.settings.redis_key_prefix
    return prefix


WindowQuery = Annotated[Window, Query(description="the channel table's window")]
HotQuery = Annotated[int, Query(ge=1, le=200, description="how many hot sessions")]


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=True)
async def page() -> HTMLResponse:
    """The live page for marketing and sales."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


@router.get("/dashboard/data")
async def data(request: Request, window: WindowQuery = Window.day, hot: HotQuery = 20) -> Response:
    """What the page shows, as JSON: now, hot sessions, channels and the chart."""
    body = await read_dashboard(request.app.state.redis, _prefix(request), window, hot)
    return Response(orjson.dumps(body), media_type="application/json")


# Left out of the OpenAPI schema: an endless event stream is no request-response operation.
@router.get("/dashboard/stream", include_in_schema=False)
async def stream(
    request: Request,
    window: WindowQuery = Window.day,
    hot: HotQuery = 20,
    every: Annotated[float, Query(ge=0.5, le=60, description="seconds between updates")] = 2.0,
    updates: Annotated[int | None, Query(ge=1, description="stop after this many")] = None,
) -> StreamingResponse:
    """The same data as server-sent events, one every few seconds."""
    redis, prefix = request.app.state.redis, _prefix(request)

    async def events() -> AsyncIterator[bytes]:
        sent = 0
        # A client that goes away ends the response: Starlette cancels this generator.
        while updates is None or sent < updates:
            if sent:
                await asyncio.sleep(every)
            sent += 1
            try:
                body = await read_dashboard(redis, prefix, window, hot)
                yield b"data: " + orjson.dumps(body) + b"\n\n"
            except Exception as exc:  # noqa: BLE001 - Redis away: say so, keep the stream
                yield b"event: problem\ndata: " + orjson.dumps({"error": str(exc)}) + b"\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
