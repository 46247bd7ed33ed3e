-- The room's history epoch, made (ARGV[1]) if Redis has none. KEYS: epoch.
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[1], epoch)
end
return epoch
