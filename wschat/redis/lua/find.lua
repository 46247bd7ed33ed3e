-- The stream entry of a remembered ref, or nil. KEYS: refs, refz, log. ARGV: the ref's field,
-- the oldest time (µs) it may have been stored at (append.lua's rule).
local found = redis.call('HGET', KEYS[1], ARGV[1])
if not found then return false end
local at = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
if at < tonumber(ARGV[2]) then return false end
local entries = redis.call('XRANGE', KEYS[3], found .. '-0', found .. '-0')
return entries[1] or false
