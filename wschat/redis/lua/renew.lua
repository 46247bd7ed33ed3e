-- Extend the node's lease (ARGV: node, lease ms) on Redis's clock. KEYS: nodes.
-- Returns 1 if the node had no lease (first start, or reaped meanwhile).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
