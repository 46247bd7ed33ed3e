-- Nodes whose lease ended (not ARGV[1]); each is given ARGV[2] ms to be reaped by the caller.
-- KEYS: nodes.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
local out = {}
for _, node in ipairs(dead) do
  if node ~= ARGV[1] then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), node)
    out[#out + 1] = node
  end
end
return out
