-- KEYS: members, pver, channel. ARGV: the name's key, node. Returns 1 if the node held it.
local members, pver, channel = KEYS[1], KEYS[2], KEYS[3]
local key, node = ARGV[1], ARGV[2]
local raw = redis.call('HGET', members, key)
if not raw then return 0 end
local rec = cjson.decode(raw)
if not rec.h[node] then return 0 end
rec.h[node] = nil
store(members, key, rec)
announce(pver, channel, {{'r', rec.n, node}})
return 1
