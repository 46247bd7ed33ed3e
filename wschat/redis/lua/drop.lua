-- A dead node's holdings in one room are let go. KEYS: members, pver, channel.
-- Returns how many names it held.
local members, pver, channel = KEYS[1], KEYS[2], KEYS[3]
local node = ARGV[1]
local all = redis.call('HGETALL', members)
local n = 0
for i = 1, #all, 2 do
  local rec = cjson.decode(all[i + 1])
  if rec.h[node] then
    rec.h[node] = nil
    store(members, all[i], rec)
    n = n + 1
  end
end
if n > 0 then announce(pver, channel, {{'d', node}}) end
return n
