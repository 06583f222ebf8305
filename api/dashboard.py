"""The marketing dashboard: a live page, its data as JSON, and a server-sent event stream.

Everything it shows is read from the aggregates the worker keeps in Redis
(stream/dashboard.py): a fixed number of bucket hashes per window, the hot set's top
entries and their sessions' records. No key is ever scanned.

The page and its data want the dashboard's login cookie (set by its login form) or the
dashboard key in ``X-API-Key`` (api/access.py); the page's script and style are files
of their own, so that its Content-Security-Policy allows no inline code.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import time
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, Security
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.security import APIKeyCookie, APIKeyHeader

from api.access import COOKIE, COOKIE_PATH, LOGIN_S, Access, header_bytes
from api.hot import hot_sessions as read_hot
from contracts import keys
from contracts.dashboard import (
    DAY_MS,
    DIMENSIONS,
    HOT_ANCHOR,
    HOUR_MS,
    M5_MS,
    workers_key,
)

PAGE = Path(__file__).with_name("static") / "dashboard.html"
LOGIN_PAGE = PAGE.with_name("login.html")
STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
LOGIN_BODY_MAX = 4096  # bytes of the login form
PROBLEM = orjson.dumps({"error": "data unavailable; the API's log says why"})
log = logging.getLogger(__name__)

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

_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="DashboardKey",
    description="the dashboard key (SCORER_DASHBOARD_KEY), for tools",
)
_cookie = APIKeyCookie(
    name=COOKIE,
    auto_error=False,
    scheme_name="DashboardLogin",
    description="set by POST /dashboard/login, for a browser",
)
Header = Annotated[str | None, Security(_header)]
Cookie = Annotated[str | None, Security(_cookie)]


def _denial(request: Request, header: str | None, cookie: str | None) -> HTTPException | None:
    access: Access = request.app.state.access
    return access.dashboard_denial(header_bytes(header), cookie)


async def _require_dashboard(request: Request, header: Header, cookie: Cookie) -> None:
    """The dashboard's data wants its login cookie or the dashboard key in X-API-Key."""
    denied = _denial(request, header, cookie)
    if denied is not None:
        raise denied


router = APIRouter(tags=["dashboard"])


_ANCHOR = HOT_ANCHOR.encode()  # the hot set's first member, never a session
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


def _bucket_names(name: str, size_ms: float, count: int, now_ms: float) -> list[str]:
    """The key suffixes of a window's buckets, each after a partition's dashboard prefix."""
    last = math.floor(now_ms / size_ms)
    return [f":{name}:{i}" for i in range(last - count + 1, last + 1)]


async def read_dashboard(
    redis: Any,
    layout: keys.Layout | None,
    window: Window = Window.day,
    hot: int = 20,
    prefix: str = keys.KEY_PREFIX,
) -> dict[str, Any]:
    """Read what the page shows from Redis (a fixed number of keys per partition).

    Each input partition keeps its share of the aggregates; they are added up here.
    ``prefix`` is the deployment's, for the workers' status when no layout is recorded.
    """
    if layout is not None:
        prefix = layout.prefix
    parts = [] if layout is None else [layout.dash(p) for p in range(layout.partitions)]
    pipe = redis.pipeline(transaction=False)
    for dash in parts:
        pipe.hgetall(f"{dash}:meta")
    metas = await pipe.execute() if parts else []
    now_ms = max((_f(m.get(b"now_ms")) for m in metas), default=0.0)
    active = sum(_f(m.get(b"active")) for m in metas)
    wall_min = math.floor(time.time() / 60)
    minutes = list(range(wall_min - RATE_MINUTES + 1, wall_min + 1))

    if window is Window.all:
        channel_names = [":all"]
    else:
        channel_names = _bucket_names(*WINDOW_BUCKETS[window], now_ms)
    chart_name, chart_ms, chart_count = CHART_BUCKETS[window]
    chart_names = _bucket_names(chart_name, chart_ms, chart_count, now_ms)

    pipe = redis.pipeline(transaction=False)
    for dash in parts:
        for name in channel_names:
            pipe.hgetall(dash + name)
        for name in chart_names:
            pipe.hmget(dash + name, "n", "p", "pu", "c")
        for m in minutes:
            pipe.hmget(f"{dash}:rate:{m}", "events", "scores")
        pipe.zrevrange(f"{dash}:hot", 0, max(0, hot - 1), withscores=True)
    pipe.hgetall(workers_key(prefix))
    results = await pipe.execute()
    workers_h = results[-1]
    channel_h: list[dict[bytes, bytes]] = []
    chart = [[0.0, 0.0, 0.0] for _ in chart_names]  # sessions, expected, observed
    rates = [[0, 0] for _ in minutes]
    hot_entries: list[tuple[float, int, bytes]] = []
    at = 0
    for p in range(len(parts)):
        channel_h += results[at : at + len(channel_names)]
        at += len(channel_names)
        for row, (n, fp, pu, c) in zip(chart, results[at : at + len(chart_names)], strict=True):
            row[0] += _f(n)
            row[1] += _f(fp) + _f(pu) / 1e6
            row[2] += _f(c)
        at += len(chart_names)
        for rate, (e, sc) in zip(rates, results[at : at + len(minutes)], strict=True):
            rate[0] += int(_f(e))
            rate[1] += int(_f(sc))
        at += len(minutes)
        hot_entries += [(score, p, sid) for sid, score in results[at] if sid != _ANCHOR]
        at += 1
    hot_entries.sort(key=lambda e: (-e[0], e[2]))

    totals, by_dim = _merge(channel_h)
    channels = {
        dim: [
            _channel_row(v, s)
            for v, s in sorted(rows.items(), key=lambda kv: -kv[1]["n"])[:CHANNEL_ROWS]
        ]
        for dim, rows in by_dim.items()
    }

    hot_sessions = [] if layout is None else await read_hot(redis, layout, hot_entries[:hot])

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
            "active_sessions": int(active),
            "events_per_minute": [e for e, _ in rates],
            "scores_per_minute": [s for _, s in rates],
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
                "start_ms": float(name.rsplit(":", 1)[1]) * chart_ms,
                "sessions": int(n),
                "expected": max(0.0, expected),
                "observed": int(c),
            }
            for name, (n, expected, c) in zip(chart_names, chart, strict=True)
        ],
        "chart_bucket_ms": chart_ms,
    }


def _prefix(request: Request) -> str:
    prefix: str = request.app.state.settings.redis_key_prefix
    return prefix


async def _layout(request: Request) -> keys.Layout | None:
    layout: keys.Layout | None = await request.app.state.layouts.get(request.app.state.redis)
    return layout


WindowQuery = Annotated[Window, Query(description="the channel table's window")]
HotQuery = Annotated[int, Query(ge=1, le=200, description="how many hot sessions")]


def _login_page(status: int, message: str) -> HTMLResponse:
    text = LOGIN_PAGE.read_text(encoding="utf-8")
    return HTMLResponse(text.replace("{message}", html.escape(message)), status_code=status)


@router.get(
    "/dashboard",
    response_class=HTMLResponse,
    responses={401: {"description": "the login form"}, 403: {"description": "the login form"}},
)
async def page(request: Request, header: Header, cookie: Cookie) -> HTMLResponse:
    """The live page for marketing and sales; its login form until the browser logs in."""
    denied = _denial(request, header, cookie)
    if denied is None:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))
    first_visit = header is None and cookie is None and denied.status_code == 401
    return _login_page(denied.status_code, "" if first_visit else str(denied.detail))


# The login form's POST: the key goes in the body, never in a URL, and comes back as a
# cookie that carries a signed expiry rather than the key.
@router.post("/dashboard/login", include_in_schema=False)
async def login(request: Request) -> Response:
    """Check the dashboard key from the login form; set the login cookie."""
    access: Access = request.app.state.access
    body = await request.body()
    if len(body) > LOGIN_BODY_MAX:
        return _login_page(413, "the form was too large")
    given = parse_qs(body.decode("utf-8", "replace")).get("key", [""])[0].strip()
    if access.demo:
        return RedirectResponse(COOKIE_PATH, status_code=303)
    denied = access.dashboard_denial(given.encode("utf-8"), None)
    if denied is not None:
        return _login_page(denied.status_code, str(denied.detail))
    response = RedirectResponse(COOKIE_PATH, status_code=303)
    response.set_cookie(
        COOKIE,
        access.login_token(),
        max_age=LOGIN_S,
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/dashboard/logout", include_in_schema=False)
async def logout() -> Response:
    """Forget the login cookie."""
    response = RedirectResponse(COOKIE_PATH, status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


# The page's script and style, served by the API so that its policy needs no inline code.
@router.get("/dashboard/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    """The page's script and style sheet (no data in them: served without a key)."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail="no such file")
    content = (PAGE.parent / name).read_bytes()
    return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/data", dependencies=[Depends(_require_dashboard)])
async def data(request: Request, window: WindowQuery = Window.day, hot: HotQuery = 20) -> Response:
    """What the page shows, as JSON: now, hot sessions, channels and the chart."""
    body = await read_dashboard(
        request.app.state.redis, await _layout(request), window, hot, _prefix(request)
    )
    return Response(orjson.dumps(_with_drivers(body, request)), media_type="application/json")


def _with_drivers(body: dict[str, Any], request: Request) -> dict[str, Any]:
    """The page's data with, per channel, the features that most separate its converting
    sessions (the served model's card, ``training/drivers.py``; None before it had them)."""
    card = getattr(request.app.state, "card", None) or {}
    body["drivers"] = card.get("channel_drivers")
    return body


# Left out of the OpenAPI schema: an endless event stream is no request-response operation.
@router.get(
    "/dashboard/stream", include_in_schema=False, dependencies=[Depends(_require_dashboard)]
)
async def stream(
    request: Request,
    window: WindowQuery = Window.day,
    hot: HotQuery = 20,
    every: Annotated[float, Query(ge=0.5, le=60, description="seconds between updates")] = 2.0,
    updates: Annotated[int | None, Query(ge=1, description="stop after this many")] = None,
) -> StreamingResponse:
    """The same data as server-sent events, one every few seconds."""
    redis = request.app.state.redis

    async def events() -> AsyncIterator[bytes]:
        sent = 0
        failing = False
        # A client that goes away ends the response: Starlette cancels this generator.
        while updates is None or sent < updates:
            if sent:
                await asyncio.sleep(every)
            sent += 1
            try:
                body = await read_dashboard(
                    redis, await _layout(request), window, hot, _prefix(request)
                )
                yield b"data: " + orjson.dumps(_with_drivers(body, request)) + b"\n\n"
                failing = False
            except Exception as exc:  # noqa: BLE001 - Redis away: say so, keep the stream
                # What Redis said goes to the log (once per outage of this stream), not
                # to the page.
                if not failing:
                    log.warning(
                        "dashboard stream: data unavailable: %s: %s", type(exc).__name__, exc
                    )
                failing = True
                yield b"event: problem\ndata: " + PROBLEM + b"\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
