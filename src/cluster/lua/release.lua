-- Gives up a name this node holds: a reservation that never joined, or a member that left.
-- Only the holder can release it; a `leave` frame, if given, is published and counts as
-- activity of the room.
-- KEYS[1] owners, KEYS[2] members, KEYS[3] this node's members, KEYS[4] sequence, KEYS[5] history
-- ARGV[1] the name, ARGV[2] this node, ARGV[3] the room, ARGV[4] `leave` frame or '',
-- ARGV[5] the room's channel, ARGV[6] history TTL in ms
redis.call('SREM', KEYS[3], ARGV[3] .. '/' .. ARGV[1])
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[5], ARGV[4])
  redis.call('PEXPIRE', KEYS[4], ARGV[6])
  redis.call('PEXPIRE', KEYS[5], ARGV[6])
end
return 1
