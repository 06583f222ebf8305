"""The Lua scripts of the session store (stream/state.py), each with its contract.

Every script that writes runs the fence first (``FENCE_LUA``): a Redis that holds less
than this worker wrote (it lost writes) gets nothing written on top.
"""

from stream import dashboard

# The fence, run first by every script that writes: ``lost(fence, keys)`` is true when
# Redis holds less of an applied-offsets field than this worker knows it wrote (it lost
# writes); the script then writes nothing and returns 'LOST'. ``fence`` is a list of
# [index in keys, field, offset] triples (``ScriptCalls.fence``).
FENCE_LUA = """
local function lost(fence, keys)
  for f = 1, #fence do
    local cur = redis.call('HGET', keys[fence[f][1]], fence[f][2])
    if not cur or tonumber(cur) < tonumber(fence[f][3]) then return true end
  end
  return false
end
"""

# Park hits only while their session is not released yet, atomically with that check.
# KEYS: session and pending key of each hit's session, in pairs, then the fence's keys;
# ARGV: the TTL, the most hits one session may have parked, the number of pairs, the
# fence, then one packed hit per pair. Returns 1 for each hit parked, 0 where its
# session is ready, 2 where its session has the most parked.
PARK_SCRIPT = (
    FENCE_LUA
    + """
if lost(cmsgpack.unpack(ARGV[4]), KEYS) then return 'LOST' end
local out = {}
local most = tonumber(ARGV[2])
for i = 1, 2 * tonumber(ARGV[3]), 2 do
  if redis.call('HEXISTS', KEYS[i], 'ready') == 1 then
    out[#out + 1] = 0
  elseif redis.call('LLEN', KEYS[i + 1]) >= most then
    out[#out + 1] = 2
  else
    redis.call('RPUSH', KEYS[i + 1], ARGV[(i + 1) / 2 + 4])
    redis.call('EXPIRE', KEYS[i + 1], ARGV[1])
    out[#out + 1] = 1
  end
end
return out
"""
)

# Release sessions to their hits (their session-start scores are on Kafka) and hand
# over the hits parked so far; no hit parks after this. KEYS: session and pending key
# of each session, in pairs, then the fence's keys; ARGV: the number of pairs, the
# fence. Returns, per session, its parked hits, or false if its state is not in Redis
# (it expired, or Redis lost it): such a session is not marked ready, since a hit must
# never find a ready session without its row.
RELEASE_SCRIPT = (
    FENCE_LUA
    + """
if lost(cmsgpack.unpack(ARGV[2]), KEYS) then return 'LOST' end
local out = {}
for i = 1, 2 * tonumber(ARGV[1]), 2 do
  if redis.call('HEXISTS', KEYS[i], 'row') == 1 then
    redis.call('HSET', KEYS[i], 'ready', '1')
    out[#out + 1] = redis.call('LRANGE', KEYS[i + 1], 0, -1)
  else
    out[#out + 1] = false
  end
end
return out
"""
)

# A batch's writes, atomically, in one call: ARGV[1] is the dashboard's settings
# (stream/dashboard.py), ARGV[2] the dashboard share the call's sums go to, each further
# argument one part: MessagePack of [commands, fence, dashboard prefixes, keys, probe]. A
# single Redis gets one part, whose keys are the call's KEYS (false in the part); Redis
# Cluster gets a part per input partition of the master, each with its keys (one slot
# each), and the script flag that lets a call reach keys of several slots of its node
# (APPLY_CLUSTER_SCRIPT). There, before anything is written, the call looks for a key
# that is never written (the probe, ``Layout.probe``) in each part's slot and in the
# share's: a slot the node does not hold fails the call, and so does a slot being
# migrated (Redis answers a missing key there with a redirection), with nothing written.
# A slot that passes cannot move while the script runs.
#
# The commands are a run of: name, the index of its key in the part's keys, its
# argument count and its arguments (one packed argument instead of thousands keeps
# the client's work small). S, H, C and R are the session and dashboard commands of
# stream/dashboard.py; AMAX field offset raises an applied-offsets field
# (``Layout.applied``) to the offset, never lowers it. The fence is a list of [index in
# keys, field, offset] triples: the offsets this worker knows Redis holds. If Redis
# holds less in any part (it lost writes), nothing is written and the call returns
# 'LOST'; else the ids of the sessions whose rows it held already (S).
APPLY_SCRIPT = (
    dashboard.LUA
    + FENCE_LUA
    + """
SHARE = ARGV[2]
local parts = {}
for p = 3, #ARGV do
  local part = cmsgpack.unpack(ARGV[p])
  local K = part[4] or KEYS
  if part[4] then redis.call('EXISTS', part[5]) end
  if lost(part[2], K) then return 'LOST' end
  parts[#parts + 1] = part
end
if parts[1][4] then redis.call('EXISTS', SHARE .. ':probe') end
local held = {}
for p = 1, #parts do
  local ops, K = parts[p][1], parts[p][4] or KEYS
  DASH = parts[p][3]
  local i, n = 1, #ops
  while i <= n do
    local name, c = ops[i], ops[i + 2]
    local key = K[ops[i + 1]]
    if name == 'H' then
      hits(key, ops, i + 3, c)
    elseif name == 'S' then
      if start(key, ops, i + 3, c) then held[#held + 1] = ops[i + 4] end
    elseif name == 'C' then
      close(key, ops, i + 3, c)
    elseif name == 'R' then
      rate(ops, i + 3)
    elseif name == 'AMAX' then
      local field, offset = ops[i + 3], ops[i + 4]
      local cur = redis.call('HGET', key, field)
      if not cur or tonumber(cur) < tonumber(offset) then redis.call('HSET', key, field, offset) end
    else
      redis.call(name, key, unpack(ops, i + 3, i + 2 + c))
    end
    i = i + 3 + c
  end
end
flush()
return held
"""
)
APPLY_CLUSTER_SCRIPT = "#!lua flags=allow-cross-slot-keys\n" + APPLY_SCRIPT

# A batch's reads in one call. KEYS: the session hashes; ARGV[1]: MessagePack of, per
# session, the fields to read; ARGV[2], of the place of ``latest`` among them (0: not
# read). Returns MessagePack of each session's values, in that order, false where
# missing; after ``latest`` (its latest score's field name), that field's entry.
READ_SCRIPT = """
local fields, at = cmsgpack.unpack(ARGV[1]), cmsgpack.unpack(ARGV[2])
local out = {}
for s = 1, #KEYS do
  local row = redis.call('HMGET', KEYS[s], unpack(fields[s]))
  local a = at[s]
  if a > 0 then
    local name = row[a]
    local entry = name and string.byte(name, 1) ~= 123 and redis.call('HGET', KEYS[s], name)
    table.insert(row, a + 1, entry or false)
  end
  out[s] = row
end
return cmsgpack.pack(out)
"""

# Stored scores, for copies published again. KEYS: the session hash of each score;
# ARGV[1]: MessagePack of the score's field in each. Returns MessagePack of [entry,
# packed row] per score, false where the entry is missing.
STORED_SCRIPT = """
local names = cmsgpack.unpack(ARGV[1])
local out = {}
for i = 1, #names do
  local row = redis.call('HMGET', KEYS[i], names[i], 'row')
  if row[1] then out[i] = row else out[i] = false end
end
return cmsgpack.pack(out)
"""
