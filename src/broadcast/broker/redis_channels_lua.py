"""The Lua scripts of Redis channel presence (``redis_channels.py`` says why the layout is
what it is). Each runs atomically, so a node's share, its index entries and the notifications of
a change are never seen half done, and a node removed as dead is removed whole or not at all
(in bounded steps, each of which leaves everything consistent).

Scripts compute key names (one Redis, not a Redis Cluster). ``SET ... GET`` needs Redis 6.2.
"""

from __future__ import annotations

from broadcast.broker.redis_link import PREFIX

CHANNELS_PREFIX = PREFIX + "channels:"
NOTIFY_PREFIX = CHANNELS_PREFIX + "notify:"

HELPERS = f"""
local P = '{CHANNELS_PREFIX}'
local alive = {{}}
local function live(node)
  local known = alive[node]
  if known == nil then
    known = redis.call('EXISTS', P .. 'alive:' .. node) == 1
    alive[node] = known
  end
  return known
end
-- A channel's subscribers on the live nodes, but for ``leave_out``.
local function total(channel, leave_out)
  local flat = redis.call('HGETALL', P .. 'count:' .. channel)
  local sum = 0
  for i = 1, #flat, 2 do
    if flat[i] ~= leave_out and live(flat[i]) then sum = sum + tonumber(flat[i + 1]) end
  end
  return sum
end
-- Note ``channel`` for each of its watchers but ``author``; ``send`` tells each its list.
local function note(notes, channel, author)
  for _, watcher in ipairs(redis.call('SMEMBERS', P .. 'watchers:' .. channel)) do
    if watcher ~= author then
      local list = notes[watcher]
      if list == nil then list = {{}}; notes[watcher] = list end
      list[#list + 1] = channel
    end
  end
end
local function send(notes)
  for watcher, list in pairs(notes) do
    redis.call('PUBLISH', P .. 'notify:' .. watcher, table.concat(list, '\\n'))
  end
end
-- Remove up to ``budget`` of ``node``'s shares (telling their watchers) and watches; forget the
-- node once it has none left. True if some remain.
local function drop(node, budget)
  local notes = {{}}
  local shares = redis.call('SPOP', P .. 'node:' .. node, budget)
  for _, channel in ipairs(shares) do
    local counts = P .. 'count:' .. channel
    redis.call('HDEL', counts, node)
    redis.call('HDEL', P .. 'users:' .. channel, node)
    if redis.call('EXISTS', counts) == 0 then redis.call('ZREM', P .. 'active', channel) end
    note(notes, channel, node)
  end
  send(notes)
  if #shares < budget then
    local watched = redis.call('SPOP', P .. 'watching:' .. node, budget - #shares)
    for _, channel in ipairs(watched) do redis.call('SREM', P .. 'watchers:' .. channel, node) end
  end
  if redis.call('EXISTS', P .. 'node:' .. node, P .. 'watching:' .. node) > 0 then return true end
  redis.call('SREM', P .. 'nodes', node)
  return false
end
"""

# ARGV[1]: this node, ARGV[2]: its TTL (ms), ARGV[3]: the shares, a JSON list of [channel,
# count, users] (users: the JSON list of named users, '' for none, '=' for as last written),
# ARGV[4]: the watches, a JSON list of [channel, 1 to watch or 0 to stop]. (JSON, not one
# argument per value: redis-py packs 1,500 arguments slowly.) Returns 1 when ``alive:`` was
# gone: this node was taken for dead, and must write all its shares and watches again.
# A share's ``count:`` field, its ``node:`` and ``active`` entries come and go together: a node
# that already had a share there skips the last two.
WRITE = (
    HELPERS
    + """
local node = ARGV[1]
local fresh = not redis.call('SET', P .. 'alive:' .. node, '1', 'PX', ARGV[2], 'GET')
redis.call('SADD', P .. 'nodes', node)
local mine, notes = P .. 'node:' .. node, {}
for _, share in ipairs(cjson.decode(ARGV[3])) do
  local channel, count, users = share[1], share[2], share[3]
  local counts, named = P .. 'count:' .. channel, P .. 'users:' .. channel
  local before = tonumber(redis.call('HGET', counts, node) or '0')
  if count > 0 then
    redis.call('HSET', counts, node, count)
    if before == 0 then
      redis.call('SADD', mine, channel)
      redis.call('ZADD', P .. 'active', 0, channel)
    end
    if users == '' then
      redis.call('HDEL', named, node)
    elseif users ~= '=' then
      redis.call('HSET', named, node, users)
    end
  elseif before > 0 then
    redis.call('HDEL', counts, node)
    redis.call('HDEL', named, node)
    redis.call('SREM', mine, channel)
    if redis.call('EXISTS', counts) == 0 then redis.call('ZREM', P .. 'active', channel) end
  end
  if count ~= before then note(notes, channel, node) end
end
for _, op in ipairs(cjson.decode(ARGV[4])) do
  if op[2] == 1 then
    redis.call('SADD', P .. 'watchers:' .. op[1], node)
    redis.call('SADD', P .. 'watching:' .. node, op[1])
  else
    redis.call('SREM', P .. 'watchers:' .. op[1], node)
    redis.call('SREM', P .. 'watching:' .. node, op[1])
  end
end
send(notes)
if fresh then return 1 end
return 0
"""
)

# ARGV[1]: a budget. Removes what nodes whose ``alive:`` is gone left; 1 if some remains.
REAP = (
    HELPERS
    + """
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if not live(node) and drop(node, tonumber(ARGV[1])) then return 1 end
end
return 0
"""
)

# ARGV[1]: this node, ARGV[2]: a budget. Its clean stop; 1 if some of its shares remain.
LEAVE = (
    HELPERS
    + """
redis.call('DEL', P .. 'alive:' .. ARGV[1])
if drop(ARGV[1], tonumber(ARGV[2])) then return 1 end
return 0
"""
)

# ARGV[1]: the node to leave out ('' for none), ARGV[2]: a JSON list of channels. Each one's
# count, as a JSON list (cheaper for redis-py to read than one reply per channel).
TOTALS = (
    HELPERS
    + """
local counts = {}
for _, channel in ipairs(cjson.decode(ARGV[2])) do counts[#counts + 1] = total(channel, ARGV[1]) end
return cjson.encode(counts)
"""
)

# ARGV[1]: a channel. Its total, then the JSON lists of named users of the live nodes.
CHANNEL = (
    HELPERS
    + """
local reply = {total(ARGV[1], '')}
local flat = redis.call('HGETALL', P .. 'users:' .. ARGV[1])
for i = 1, #flat, 2 do
  if live(flat[i]) then reply[#reply + 1] = flat[i + 1] end
end
return reply
"""
)

# ARGV[1], ARGV[2]: ZRANGEBYLEX bounds, ARGV[3]: names to look at, ARGV[4]: active ones wanted.
# Returns the last name looked at, '1' if more may follow, then (name, total) pairs. (A name
# whose nodes all died but are not yet reaped has no live share, and is skipped.)
PAGE = (
    HELPERS
    + """
local names = redis.call('ZRANGEBYLEX', P .. 'active', ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
local reply = {'', ''}
local wanted = tonumber(ARGV[4])
for _, name in ipairs(names) do
  reply[1] = name
  local count = total(name, '')
  if count > 0 then
    reply[#reply + 1] = name
    reply[#reply + 1] = count
    if #reply - 2 >= 2 * wanted then return reply end
  end
end
if #names == tonumber(ARGV[3]) then reply[2] = '1' end
return reply
"""
)
