-- Shared by the roster's scripts (prepended to each): store a name's record, and announce
-- the changes on the room's channel numbered by pver.
local function announce(pver, channel, changes)
  if #changes == 0 then return end
  local v = redis.call('INCR', pver)
  redis.call('PUBLISH', channel, cjson.encode({p = v, c = changes}))
end
local function store(members, name, rec)
  if next(rec.h) == nil then
    redis.call('HDEL', members, name)
  else
    redis.call('HSET', members, name, cjson.encode(rec))
  end
end
