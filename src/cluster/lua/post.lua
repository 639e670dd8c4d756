-- Posts one message: assigns the room's next id, stores the frame in the bounded history and
-- publishes it, in one atomic step, so every subscriber and the history agree on the order.
-- KEYS[1] the room's sequence, KEYS[2] its history (a sorted set scored by id)
-- ARGV[1] the frame after its id (`,"room":...}`), ARGV[2] history length, ARGV[3] history TTL
-- in ms, ARGV[4] the posting node's highest id seen in the room, ARGV[5] the room's channel
local id = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[4])
if id <= floor then
  -- Redis lost the sequence (a restart without persistence): continue above what members saw.
  id = floor + 1
  redis.call('SET', KEYS[1], id)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local frame = '{"type":"message","id":' .. string.format('%d', id) .. ARGV[1]
local keep = tonumber(ARGV[2])
if keep > 0 then
  redis.call('ZADD', KEYS[2], id, frame)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -keep - 1)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('PUBLISH', ARGV[5], frame)
return id
