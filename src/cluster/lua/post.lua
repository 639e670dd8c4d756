-- Posts a batch of messages, in order: each gets its room's next id, is stored in the room's
-- bounded history and published, all in one atomic step, so every subscriber and the history
-- agree on the order. A batch carries the posts of many connections of one node: one call
-- instead of one per message, and each room's trim and TTLs once per batch.
-- KEYS: for message i, KEYS[2i-1] its room's sequence and KEYS[2i] its room's history
-- (a sorted set scored by id)
-- ARGV[1] history length, ARGV[2] history TTL in ms, then for message i (from ARGV[3], three
-- each): the frame after its id (`,"room":...}`), the posting node's highest id seen in the
-- room, the room's channel
-- Returns the ids, in order.
local keep = tonumber(ARGV[1])
local ttl = ARGV[2]
local ids = {}
local touched = {}
for i = 1, #KEYS / 2 do
  local seq, history = KEYS[2 * i - 1], KEYS[2 * i]
  local tail, floor, channel = ARGV[3 * i], tonumber(ARGV[3 * i + 1]), ARGV[3 * i + 2]
  local id = redis.call('INCR', seq)
  if id <= floor then
    -- Redis lost the sequence (a restart without persistence): continue above what members saw.
    id = floor + 1
    redis.call('SET', seq, id)
  end
  local frame = '{"type":"message","id":' .. string.format('%d', id) .. tail
  if keep > 0 then
    redis.call('ZADD', history, id, frame)
  end
  redis.call('PUBLISH', channel, frame)
  ids[i] = id
  touched[seq] = history
end
for seq, history in pairs(touched) do
  redis.call('PEXPIRE', seq, ttl)
  if keep > 0 then
    redis.call('ZREMRANGEBYRANK', history, 0, -keep - 1)
    redis.call('PEXPIRE', history, ttl)
  end
end
return ids
