-- Gives up a name one connection of this node holds: a reservation that never joined, a member
-- that left, or a claim whose reply was lost. Only its holder can release it; a `leave` frame,
-- if given, is published and counts as activity of the room.
-- KEYS[1] owners, KEYS[2] members, KEYS[3] this node's names, KEYS[4] sequence, KEYS[5] history
-- ARGV[1] the name, or '' for whatever name the holder has (a guest whose claim was lost),
-- ARGV[2] the holder, ARGV[3] the room, ARGV[4] a `leave` frame or '' (sent only with a name),
-- ARGV[5] the room's channel, ARGV[6] TTL in ms
local name = ARGV[1]
if name == '' then
  local owners = redis.call('HGETALL', KEYS[1])
  for i = 1, #owners, 2 do
    if owners[i + 1] == ARGV[2] then
      name = owners[i]
      break
    end
  end
  if name == '' then
    return 0
  end
end
if redis.call('HGET', KEYS[1], name) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], name)
redis.call('ZREM', KEYS[2], name)
redis.call('SREM', KEYS[3], ARGV[3] .. '/' .. name)
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
  redis.call('PEXPIRE', KEYS[5], ARGV[6])
end
return 1
