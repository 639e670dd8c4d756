-- The data set's identity: set once by the first node, gone when Redis loses its data.
-- KEYS[1] the epoch key; ARGV[1] a fresh random value to use if there is none
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
