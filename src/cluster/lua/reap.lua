-- Removes the members of every node whose lease ran out (and of ARGV[2], a node saying
-- goodbye), publishing a `leave` for each, atomically, so exactly one node does it once.
-- A name's owner is its holder, `node/connection`. Room and user names are restricted to
-- [A-Za-z0-9_.-], so the frames need no escaping.
-- KEYS[1] the leases; ARGV[1] history TTL in ms, ARGV[2] a node to remove now, or ''
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms)
if ARGV[2] ~= '' then
  table.insert(gone, ARGV[2])
end
local removed = 0
for _, node in ipairs(gone) do
  local set = 'wschat:node:' .. node .. ':members'
  for _, entry in ipairs(redis.call('SMEMBERS', set)) do
    local slash = string.find(entry, '/', 1, true)
    local room = slash and string.sub(entry, 1, slash - 1) or ''
    local name = slash and string.sub(entry, slash + 1) or ''
    local base = 'wschat:room:' .. room
    local owner = slash and redis.call('HGET', base .. ':owners', name)
    if owner and string.sub(owner, 1, #node + 1) == node .. '/' then
      redis.call('HDEL', base .. ':owners', name)
      redis.call('ZREM', base .. ':members', name)
      redis.call('PUBLISH', base, '{"type":"leave","room":"' .. room .. '","user":"' .. name ..
        '","ts":' .. string.format('%d', ms) .. '}')
      redis.call('PEXPIRE', base .. ':seq', ARGV[1])
      redis.call('PEXPIRE', base .. ':history', ARGV[1])
      removed = removed + 1
    end
  end
  redis.call('DEL', set)
  redis.call('ZREM', KEYS[1], node)
end
return removed
