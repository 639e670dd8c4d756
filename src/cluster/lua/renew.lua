-- Renews this node's lease: it is alive until now + the lease, by Redis's clock (one clock for
-- every node). Returns 1 when the lease was missing: this node had been declared dead, or
-- Redis lost its data, and its members must be registered again.
-- KEYS[1] the leases (node -> deadline in ms); ARGV[1] this node, ARGV[2] the lease in ms
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
return redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
