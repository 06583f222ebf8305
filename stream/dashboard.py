"""The aggregates behind the marketing dashboard, kept by the worker as it scores.

Every session counts once, in the time buckets of its start (event time): 5-minute
buckets (the last hour), hourly buckets (the last day), daily buckets (the chart) and
one bucket for all retained time. Per bucket, a hash holds the totals and, per
utm_medium, utm_source and utm_campaign value, the sessions (``n``), the sum of their
session-start probabilities (``pu``, in millionths, the expected conversions: that model
is calibrated per session, so observed / expected near 1 means a channel converts as the
model expects) and the observed conversions (``c``). All three are integers, so Redis
adds them with HINCRBY, much cheaper than HINCRBYFLOAT; buckets written before kept the
probabilities as a float sum ``p``, which the page still adds in. A bucket takes new
channel values while its hash has fewer than DASH_BUCKET_FIELDS_MAX fields; later new
values count together as "(other)", so no stream of made-up values grows it unbounded.

Updates run inside the worker's batch write (the same Lua call, atomic with the
session state), and each session's dashboard record (``dash`` hash, under the
session's hash tag) remembers what it contributed: which score it last applied (by a
sequence that only grows: 0 at the start, the hits applied, hits + 0.5 at the close),
whether its conversion is counted and whether it is still open. A redelivered batch
therefore changes nothing.

Besides: a sorted set of the open, not yet converted sessions by current probability
(the in-session model's, after every hit; bounded: the hot list), the count of open
sessions, the stream's event time, events and scores per wall-clock minute, and each
worker's lag and model version. A hot session's trajectory is not kept here: the page
reads it from the session's score history, which has every score anyway.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from contracts.dashboard import DIMENSIONS, HOT_MAX, NONE_VALUE, dash_prefix
from contracts.limits import DASH_BUCKET_FIELDS_MAX, OTHER_VALUE

# Lua, run at the start of APPLY_SCRIPT: functions for the DSTART and DSCORE commands,
# and flush(), which APPLY_SCRIPT calls last: a batch's hundreds of sessions mostly
# share their time buckets and channels, so their increments are summed first and
# each hash field is written once per call.
# ARGV[2] is MessagePack of [dashboard key prefix, session TTL, hot-set size, TTL of
# 5-minute, hourly and longer buckets, the fields a bucket takes new channel values
# up to, the name of the rest].
LUA = """
local cfg = cmsgpack.unpack(ARGV[2])
-- Numbers handed to redis.call go as text: Redis formats a Lua number with snprintf.
local P, STTL, HOT_MAX = cfg[1], tostring(cfg[2]), cfg[3]
local TTL = {tostring(cfg[4]), tostring(cfg[5]), tostring(cfg[6]), tostring(cfg[6])}
local FIELDS_MAX, OTHER = cfg[7], cfg[8]
local fmt = string.format
local DIMS = {'utm_medium', 'utm_source', 'utm_campaign'}
-- A call's aggregate increments, summed per hash and field, and the open-count and
-- stream-time changes: written once, by flush(), at the end of the call.
local sums, touched, ttls, active, now_ms, hot_added = {}, {}, {}, 0, nil, false
local function bump(hash, ttl, field, v)
  local h = sums[hash]
  if not h then
    h = {}
    sums[hash] = h
    touched[#touched + 1] = hash
    ttls[hash] = ttl
  end
  h[field] = (h[field] or 0) + v
end
-- The name a channel value counts under in a bucket: its own, unless the bucket's hash
-- has FIELDS_MAX fields already and the value is not among them; then OTHER. So no
-- stream of made-up values grows a bucket past FIELDS_MAX (plus one call's additions).
-- A conversion counts where the session's start counted: the bucket was not full then
-- if it is not now, and if it is, the value's own field says.
local names, full = {}, {}
local function label(hash, k, value)
  if value == OTHER then return OTHER end
  local f = full[hash]
  if f == nil then
    f = redis.call('HLEN', hash) >= FIELDS_MAX
    full[hash] = f
  end
  if not f then return value end
  local key = hash .. '|' .. k .. '|' .. value
  local m = names[key]
  if m then return m end
  if redis.call('HEXISTS', hash, 'n|' .. DIMS[k] .. '|' .. value) == 1 then
    m = value
  else
    m = OTHER
  end
  names[key] = m
  return m
end
-- Add a session's figures (stats: name, value, name, value ...) to its buckets: the
-- totals, and per channel value (the daily buckets keep totals only).
local function add(d, stats)
  local ms = d[1]
  local b = {fmt('%s:m5:%d', P, math.floor(ms / 300000)),
             fmt('%s:h:%d', P, math.floor(ms / 3600000)),
             fmt('%s:d:%d', P, math.floor(ms / 86400000)), P .. ':all'}
  for j = 1, 4 do
    for s = 1, #stats, 2 do bump(b[j], TTL[j], stats[s], stats[s + 1]) end
    if j ~= 3 then
      for k = 1, 3 do
        local name = '|' .. DIMS[k] .. '|' .. label(b[j], k, d[k + 1])
        for s = 1, #stats, 2 do bump(b[j], TTL[j], stats[s] .. name, stats[s + 1]) end
      end
    end
  end
end
local function hot(sid, p)
  redis.call('ZADD', P .. ':hot', p, sid)
  hot_added = true
end
local function flush()
  for _, hash in ipairs(touched) do
    for field, v in pairs(sums[hash]) do
      redis.call('HINCRBY', hash, field, fmt('%d', v))
    end
    redis.call('EXPIRE', hash, ttls[hash])
  end
  local meta = P .. ':meta'
  if active ~= 0 then
    redis.call('HINCRBY', meta, 'active', fmt('%d', active))
  end
  if now_ms then
    local now = tonumber(redis.call('HGET', meta, 'now_ms') or '0')
    if now_ms > now then redis.call('HSET', meta, 'now_ms', now_ms) end
  end
  if active ~= 0 or now_ms then redis.call('EXPIRE', meta, TTL[4]) end
  if hot_added then
    local key = P .. ':hot'
    if redis.call('ZCARD', key) > HOT_MAX then
      redis.call('ZREMRANGEBYRANK', key, 0, -(HOT_MAX + 1))
    end
    redis.call('EXPIRE', key, TTL[4])
  end
end
local function dstart(key, a, i)
  if redis.call('EXISTS', key) == 1 then return end
  local sid, p, ms = a[i], a[i + 1], a[i + 2]  -- probability and start ms as text
  local pn, msn = tonumber(p), tonumber(ms)
  redis.call('HSET', key, 'seq', '0', 'p', p, 'ms', ms, 'm', a[i + 3], 's', a[i + 4],
    'c', a[i + 5], 'dev', a[i + 6], 'city', a[i + 7], 'open', '1', 'hits', '0')
  redis.call('EXPIRE', key, STTL)
  local d = {msn, a[i + 3], a[i + 4], a[i + 5]}
  add(d, {'n', 1, 'pu', math.floor(pn * 1000000 + 0.5)})
  active = active + 1
  if not now_ms or msn > now_ms then now_ms = msn end
  hot(sid, p)
end
local function dscore(key, a, i)
  -- seq, p and hits as text; conv and closed as numbers
  local sid, seq, p, conv, closed, hits = a[i], a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5]
  local h = redis.call('HMGET', key, 'seq', 'ms', 'm', 's', 'c', 'conv', 'open')
  if not h[1] then return end
  local d = {tonumber(h[2]), h[3], h[4], h[5]}
  local converted, open = h[6], h[7]
  if conv == 1 and not converted then
    converted = '1'
    redis.call('HSET', key, 'conv', '1')
    add(d, {'c', 1})
    redis.call('ZREM', P .. ':hot', sid)
  end
  if tonumber(seq) > tonumber(h[1]) then
    redis.call('HSET', key, 'seq', seq, 'p', p, 'hits', hits)
    if open and not converted and closed == 0 then hot(sid, p) end
  end
  if closed == 1 and open then
    redis.call('HDEL', key, 'open')
    active = active - 1
    redis.call('ZREM', P .. ':hot', sid)
  end
  redis.call('EXPIRE', key, STTL)
end
"""


def config(prefix: str, session_ttl_s: int, retention_s: int) -> list[Any]:
    """Return the dashboard part of APPLY_SCRIPT's arguments."""
    return [
        dash_prefix(prefix),
        session_ttl_s,
        HOT_MAX,
        2 * 3600,
        2 * 86400,
        retention_s,
        DASH_BUCKET_FIELDS_MAX,
        OTHER_VALUE,
    ]


def channel_values(row: dict[str, Any]) -> list[str]:
    """Return a session row's utm_medium, utm_source, utm_campaign, device and city."""
    out = []
    for column in (*DIMENSIONS, "device_category", "geo_city"):
        value = row.get(column)
        out.append(NONE_VALUE if value in (None, "") else str(value).replace("|", "/"))
    return out


@dataclass
class DashStart:
    """A new session for the dashboard: its start score and where it came from."""

    session_id: str
    probability: float
    start_ms: float
    values: list[str]  # channel_values of its row


@dataclass
class DashScore:
    """A session's newest score, conversion or close, for the dashboard."""

    session_id: str
    seq: float  # 0 start, hits applied, hits + 0.5 at the close; -1: no new score
    probability: float
    converted: bool = False
    closed: bool = False
    hits: int = 0


def start_args(d: DashStart) -> list[Any]:
    """Arguments of one DSTART command (numbers the script stores go as text)."""
    return [d.session_id, repr(float(d.probability)), _text(d.start_ms), *d.values]


def score_args(d: DashScore) -> list[Any]:
    """Arguments of one DSCORE command (numbers the script stores go as text)."""
    return [
        d.session_id,
        _text(d.seq),
        repr(float(d.probability)),
        int(d.converted),
        int(d.closed),
        str(int(d.hits)),
    ]


def _text(x: float) -> str:
    """A number as text: a whole one without its fraction (cheaper than ``repr``)."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def worker_name() -> str:
    """Return this worker process's name in the status hash."""
    return f"{socket.gethostname()}:{os.getpid()}"
