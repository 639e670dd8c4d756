-- Claims a name in a room for this node: cluster-wide uniqueness of names (409 otherwise).
-- With no name, claims the next free `guest-<n>`. Returns {name, 1} when claimed now,
-- {name, 0} when this node held it already, nil when another node holds it.
-- KEYS[1] the room's owners (name -> node), KEYS[2] its members (name by join time),
-- KEYS[3] this node's members (`room/name`), KEYS[4] the guest counter
-- ARGV[1] the name or '', ARGV[2] this node, ARGV[3] the room, ARGV[4] a `join` frame to publish
-- when claimed now ('' for none), ARGV[5] the room's channel
local name = ARGV[1]
if name == '' then
  -- Guest numbers are cluster-wide; a name someone chose that looks like a guest is skipped.
  for _ = 1, 1000 do
    local candidate = 'guest-' .. string.format('%d', redis.call('INCR', KEYS[4]))
    if not redis.call('HGET', KEYS[1], candidate) then
      name = candidate
      break
    end
  end
  if name == '' then
    return nil
  end
end
local owner = redis.call('HGET', KEYS[1], name)
if owner == ARGV[2] then
  return {name, 0}
end
if owner then
  return nil
end
redis.call('HSET', KEYS[1], name, ARGV[2])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], now[1] * 1000000 + now[2], name)
redis.call('SADD', KEYS[3], ARGV[3] .. '/' .. name)
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[4])
end
return {name, 1}
