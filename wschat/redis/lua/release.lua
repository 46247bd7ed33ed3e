-- KEYS: members, pver, channel. ARGV: name, node. Returns 1 if the node held the name.
local members, pver, channel = KEYS[1], KEYS[2], KEYS[3]
local name, node = ARGV[1], ARGV[2]
local raw = redis.call('HGET', members, name)
if not raw then return 0 end
local rec = cjson.decode(raw)
if not rec.h[node] then return 0 end
rec.h[node] = nil
store(members, name, rec)
announce(pver, channel, {{'r', name, node}})
return 1
