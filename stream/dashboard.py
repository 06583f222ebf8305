"""The aggregates behind the marketing dashboard, kept by the worker as it scores.

Every session counts once, in the time buckets of its start (event time): 5-minute
buckets (the last hour), hourly buckets (the last day), daily buckets (the chart) and
one bucket for all retained time. Per bucket, a hash holds the totals and, per
utm_medium, utm_source and utm_campaign value, the sessions (``n``), the sum of their
session-start probabilities (``pu``, in millionths, the expected conversions: that model
is calibrated per session, so observed / expected near 1 means a channel converts as the
model expects) and the observed conversions (``c``). All three are integers. A bucket
takes new channel values while its hash has fewer than DASH_BUCKET_FIELDS_MAX fields;
later new values count together as "(other)", so no stream of made-up values grows it
unbounded.

The aggregates are kept in shares (``contracts.keys.Layout.dash``), updated in the batch
write: the same Lua call, atomic with the session state. A call adds its buckets' sums,
its rates and its open-count and event-time changes to one share: on a single Redis,
where one call writes every partition, partition 0's; on Redis Cluster, where a call
writes the partitions of one master, the share of the lowest partition that master
holds. So each bucket is written once a call, not once per partition, and the API adds
every partition's share up. The hot set is kept in each partition's own share on Redis
Cluster (its sessions are taken out where they were put in). What a
session contributed is told by its session hash, in the same call: its start counts
when the hash takes its ``start`` field (HSETNX), its conversion when it takes ``conv``,
its close when it takes ``closed``, and a batch of hits applies only if the hash takes
the first of their score entries. A redelivered batch therefore changes nothing.

Besides: a sorted set of the open, not yet converted sessions by current probability
(the in-session model's, after every hit; bounded: the hot list; once full, it takes
only sessions at or above its lowest), the count of open
sessions, the partition's event time, events and scores per wall-clock minute. A hot
session's trajectory is not kept here: the page reads it from the session's scores.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from contracts.dashboard import (
    DIMENSIONS,
    HOT_ANCHOR,
    HOT_MAX,
    RATE_TTL_S,
    channel_value,
)
from contracts.limits import DASH_BUCKET_FIELDS_MAX, OTHER_VALUE

# Lua, run at the start of APPLY_SCRIPT: the session commands S (start), H (hits) and C
# (close) with their dashboard effects, R (events and scores per minute), and flush(),
# which APPLY_SCRIPT calls last. A batch's sessions mostly share their time buckets and
# channels, so their increments are summed first and each bucket hash is read and
# written once per call (HMGET, then HSET of the sums), whatever the number of fields.
# ARGV[1] is MessagePack of [session TTL, hot-set size, TTL of 5-minute, hourly and
# longer buckets, the fields a bucket takes new channel values up to, the name of the
# rest, the TTL of a minute's rates, the hot set's anchor]. APPLY_SCRIPT sets DASH, the
# dashboard prefixes of the partitions of the part it runs (commands name them by their
# place in it), and SHARE, the prefix the call's sums go to.
LUA = """
local cfg = cmsgpack.unpack(ARGV[1])
-- Numbers handed to redis.call go as text: Redis formats a Lua number with snprintf.
local STTL, HOT_MAX = cfg[1], cfg[2]
local TTL = {cfg[3], cfg[4], cfg[5], cfg[5]}
local FIELDS_MAX, OTHER, RATE_TTL, ANCHOR = cfg[6], cfg[7], cfg[8], cfg[9]
local DASH, SHARE
local fmt, floor = string.format, math.floor
local DIMS = {'utm_medium', 'utm_source', 'utm_campaign'}
-- A call's aggregate increments, summed per hash and field, its open-count and
-- event-time changes, and per hot set (by dashboard prefix) its additions and
-- removals: written once, by flush(), at the end of the call.
local sums, touched, ttls, hots, hotorder = {}, {}, {}, {}, {}
local active, latest = 0, nil
local function hotset(P)
  local x = hots[P]
  if not x then
    x = {add = {}, rem = {}}
    hots[P] = x
    hotorder[#hotorder + 1] = P
  end
  return x
end
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
-- Field names made once per call: stat .. '|' .. dimension .. '|' .. value.
local fields = {}
local function field(stat, k, value)
  local byk = fields[stat]
  if not byk then byk = {{}, {}, {}}; fields[stat] = byk end
  local f = byk[k][value]
  if not f then
    f = stat .. '|' .. DIMS[k] .. '|' .. value
    byk[k][value] = f
  end
  return f
end
local buckets = {}
local function bucket(P, kind, n)
  local key = P .. kind .. n
  local b = buckets[key]
  if not b then
    b = fmt('%s:%s:%d', P, kind, n)
    buckets[key] = b
  end
  return b
end
-- Add a session's figures (stats: name, value, name, value ...) to its partition's
-- buckets: the totals, and per channel value (the daily buckets keep totals only).
local function add(P, ms, channel, stats)
  local b = {bucket(P, 'm5', floor(ms / 300000)), bucket(P, 'h', floor(ms / 3600000)),
             bucket(P, 'd', floor(ms / 86400000)), P .. ':all'}
  for j = 1, 4 do
    local hash, ttl = b[j], TTL[j]
    for s = 1, #stats, 2 do bump(hash, ttl, stats[s], stats[s + 1]) end
    if j ~= 3 then
      for k = 1, 3 do
        local value = label(hash, k, channel[k])
        for s = 1, #stats, 2 do bump(hash, ttl, field(stats[s], k, value), stats[s + 1]) end
      end
    end
  end
end
-- S: a session's row. a[i..]: dashboard index, session id, start probability and
-- start ms (as text), utm medium, source and campaign, the packed row
-- (contracts.keys.pack_row), the packed counters, the start score's field and entry,
-- then any more fields and values of the hash (its lead's tier). Nothing happens if
-- the hash has a row already, and it says so (true). ``latest`` names the latest
-- score's field.
local function start(key, a, i, c)
  if redis.call('HSETNX', key, 'row', a[i + 7]) == 0 then return true end
  redis.call('HSET', key, 'hs', a[i + 8], a[i + 9], a[i + 10], 'latest', a[i + 9],
             unpack(a, i + 11, i + c - 1))
  redis.call('EXPIRE', key, STTL)
  local x = hotset(DASH[a[i]])
  local ms = tonumber(a[i + 3])
  add(SHARE, ms, {a[i + 4], a[i + 5], a[i + 6]},
      {'n', 1, 'pu', floor(tonumber(a[i + 2]) * 1000000 + 0.5)})
  active = active + 1
  if not latest or ms > latest then latest = ms end
  x.add[#x.add + 1] = a[i + 2]
  x.add[#x.add + 1] = a[i + 1]
end
-- H: a session's hits. a[i..]: dashboard index, session id, latest probability (text),
-- converted (1: a hit of the batch converted), hot (1: open and not converted), the
-- first new score's field and entry, the packed counters, the latest score's field,
-- whether to set the TTL again (1), then the other new scores' fields and entries, and
-- the outcome's. Nothing happens if the hash has the first new score already (the batch
-- was applied).
local function hits(key, a, i, c)
  if redis.call('HSETNX', key, a[i + 5], a[i + 6]) == 0 then return end
  redis.call('HSET', key, 'hs', a[i + 7], 'latest', a[i + 8], unpack(a, i + 10, i + c - 1))
  if a[i + 9] == 1 then redis.call('EXPIRE', key, STTL) end
  local x = hotset(DASH[a[i]])
  if a[i + 3] == 1 then
    if redis.call('HSETNX', key, 'conv', '1') == 1 then
      local row = redis.call('HGET', key, 'row')
      if row then
        local r = cmsgpack.unpack(row)
        add(SHARE, r[4], r[5], {'c', 1})
      end
    end
    x.rem[#x.rem + 1] = a[i + 1]
  elseif a[i + 4] == 1 then
    x.add[#x.add + 1] = a[i + 2]
    x.add[#x.add + 1] = a[i + 1]
  end
end
-- C: a session's close. a[i..]: dashboard index, session id, then the hash's fields
-- and values. The first close of a session takes it off the open count.
local function close(key, a, i, c)
  local first = redis.call('HSETNX', key, 'closed', '1')
  redis.call('HSET', key, unpack(a, i + 2, i + c - 1))
  redis.call('EXPIRE', key, STTL, 'NX')
  if first == 1 then active = active - 1 end
  local x = hotset(DASH[a[i]])
  x.rem[#x.rem + 1] = a[i + 1]
end
-- R: events and scores in a wall-clock minute. a[i..]: dashboard index (unused: the
-- rates go to the call's share), minute, events, scores.
local function rate(a, i)
  local hash = fmt('%s:rate:%d', SHARE, a[i + 1])
  bump(hash, RATE_TTL, 'events', a[i + 2])
  bump(hash, RATE_TTL, 'scores', a[i + 3])
end
local function chunks(command, key, items, step)
  for j = 1, #items, step do
    redis.call(command, key, unpack(items, j, math.min(j + step - 1, #items)))
  end
end
local function flush()
  for _, hash in ipairs(touched) do
    local h, list = sums[hash], {}
    for f in pairs(h) do list[#list + 1] = f end
    for j = 1, #list, 1000 do
      local names = {unpack(list, j, math.min(j + 999, #list))}
      local cur = redis.call('HMGET', hash, unpack(names))
      local args = {}
      for k, f in ipairs(names) do
        args[2 * k - 1] = f
        args[2 * k] = fmt('%d', (tonumber(cur[k]) or 0) + h[f])
      end
      redis.call('HSET', hash, unpack(args))
    end
    redis.call('EXPIRE', hash, ttls[hash])
  end
  local meta = SHARE .. ':meta'
  if active ~= 0 then
    redis.call('HINCRBY', meta, 'active', fmt('%d', active))
  end
  if latest then
    local now = tonumber(redis.call('HGET', meta, 'now_ms') or '0')
    if latest > now then redis.call('HSET', meta, 'now_ms', fmt('%d', latest)) end
  end
  if active ~= 0 or latest then redis.call('EXPIRE', meta, TTL[4]) end
  for _, P in ipairs(hotorder) do
    local x = hots[P]
    local hot = P .. ':hot'
    -- Sessions that converted or closed leave first; of the others, each with its last
    -- probability of the call, a full set takes those at or above its lowest: one
    -- below leaves (or stays out) rather than go in only to be cut again.
    local gone = {}
    if #x.rem > 0 then
      for _, m in ipairs(x.rem) do gone[m] = true end
      chunks('ZREM', hot, x.rem, 1000)
    end
    if #x.add > 0 then
      local last, order = {}, {}
      for j = 1, #x.add, 2 do
        local m = x.add[j + 1]
        if not gone[m] then
          if not last[m] then order[#order + 1] = m end
          last[m] = x.add[j]
        end
      end
      local edge = redis.call('ZREVRANGE', hot, HOT_MAX - 1, HOT_MAX - 1, 'WITHSCORES')
      local lowest = edge[1] and edge[1] ~= ANCHOR and tonumber(edge[2])
      local add, drop = {}, {}
      for _, m in ipairs(order) do
        if lowest and tonumber(last[m]) < lowest then
          drop[#drop + 1] = m
        else
          add[#add + 1] = last[m]
          add[#add + 1] = m
        end
      end
      if #drop > 0 then chunks('ZREM', hot, drop, 1000) end
      if #add > 0 then
        -- The anchor goes first, so a new set is made a skip list (see HOT_ANCHOR).
        redis.call('ZADD', hot, '-inf', ANCHOR)
        chunks('ZADD', hot, add, 1000)
        if redis.call('ZCARD', hot) > HOT_MAX + 1 then
          redis.call('ZREMRANGEBYRANK', hot, 1, -(HOT_MAX + 1))
        end
        redis.call('EXPIRE', hot, TTL[4])
      end
    end
  end
end
"""


def config(session_ttl_s: int, retention_s: int) -> list[Any]:
    """Return the dashboard part of APPLY_SCRIPT's arguments (ARGV[2])."""
    return [
        str(session_ttl_s),
        HOT_MAX,
        str(2 * 3600),
        str(2 * 86400),
        str(retention_s),
        DASH_BUCKET_FIELDS_MAX,
        OTHER_VALUE,
        str(RATE_TTL_S),
        HOT_ANCHOR,
    ]


def channel_values(row: dict[str, Any]) -> list[str]:
    """Return a session row's utm_medium, utm_source, utm_campaign, device and city."""
    return [channel_value(row.get(c)) for c in (*DIMENSIONS, "device_category", "geo_city")]


def worker_name() -> str:
    """Return this worker process's name in the status hash."""
    return f"{socket.gethostname()}:{os.getpid()}"
