-- What a node needs to bring a room up to date: the room's last id and every stored frame
-- after `floor`. A sequence below `floor` (Redis came back empty) is raised to it first, so ids
-- continue above every id this node's members have seen.
-- KEYS[1] the room's sequence, KEYS[2] its history
-- ARGV[1] floor, ARGV[2] history TTL in ms
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if seq < floor then
  redis.call('SET', KEYS[1], floor, 'PX', ARGV[2])
  seq = floor
end
return {seq, redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')}
