-- Claims a name in a room for one connection of this node: cluster-wide uniqueness of names
-- (409 otherwise). With no name, claims the next free `guest-<n>`. The holder (`node/connection`)
-- is recorded as the owner, so only that connection's release can give the name up.
-- Returns {name, 1} when claimed now, {name, 0} when this holder had it already (a node
-- registering its members again), nil when someone else holds it.
-- KEYS[1] the room's owners (name -> holder), KEYS[2] its members (name by join time),
-- KEYS[3] this node's names (`room/name`), KEYS[4] the guest counter
-- ARGV[1] the name or '', ARGV[2] the holder, ARGV[3] the room, ARGV[4] a `join` frame to
-- publish when claimed now ('' for none), ARGV[5] the room's channel, ARGV[6] this node's
-- holder prefix (`node/`)
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
-- A holder of this same node that is not the claimant has ended: the node asks only for names
-- it holds nowhere itself, and its release may still be on the way. The claimant takes over.
local stale = owner and string.sub(owner, 1, #ARGV[6]) == ARGV[6]
if owner and not stale then
  return nil
end
redis.call('HSET', KEYS[1], name, ARGV[2])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], 'NX', now[1] * 1000000 + now[2], name)
redis.call('SADD', KEYS[3], ARGV[3] .. '/' .. name)
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[4])
end
return {name, 1}
