-- Messages after an id, with what `recovery` needs to judge them. KEYS: seq, log.
-- Returns {last id, oldest kept id, entries...}.
local seq, log = KEYS[1], KEYS[2]
local last = tonumber(redis.call('GET', seq) or '0')
local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
local first = 0
if #oldest > 0 then first = tonumber(string.match(oldest[1][1], '^(%d+)')) end
local found = redis.call('XRANGE', log, ARGV[1], ARGV[2], 'COUNT', ARGV[3])
return {last, first, found}
