-- Claims a name in a room for one connection of this node: cluster-wide uniqueness of names
-- (409 otherwise). With no name, claims the next free `guest-<n>`. The holder (`node/connection`)
-- is recorded as the owner, so only that connection's release can give the name up.
-- Returns {name, 1} when claimed now, {name, 0} when this holder had it already (a node
-- registering its members again), nil when someone else holds it.
-- KEYS[1] the room's owners (name -> holder), KEYS[2] its members (name by join time),
-- KEYS[3] this node's names (`room/name`), KEYS[4] the guest counter
-- ARGV[1] the name or '', ARGV[2] the holder, ARGV[3] the room, ARGV[4] a `join` frame to
-- publish when claimed now ('' for none), ARGV[5] the room's channel, ARGV[6] the holder it
-- may take over ('' for none), ARGV[7] that holder's `leave` frame ('' for none)
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
-- A connection of this node that has ended and whose release is still on its way: the new
-- claimant takes over, and that connection's `leave` (if it had joined) goes out now, since
-- its release will find the name no longer its own.
if owner and owner ~= ARGV[6] then
  return nil
end
if owner and ARGV[7] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[7])
end
redis.call('HSET', KEYS[1], name, ARGV[2])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], 'NX', now[1] * 1000000 + now[2], name)
redis.call('SADD', KEYS[3], ARGV[3] .. '/' .. name)
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[4])
end
return {name, 1}
