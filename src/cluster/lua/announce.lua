-- Publishes a presence frame (`join`) and counts it as activity of the room.
-- KEYS[1] sequence, KEYS[2] history; ARGV[1] the frame, ARGV[2] channel, ARGV[3] TTL in ms
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return redis.call('PUBLISH', ARGV[2], ARGV[1])
