-- KEYS: members, pver, channel. Returns 'new', 'shared' (the same user on one more node),
-- 'moved' (a takeover by token), 'held' (this node held it already) or 'taken'.
-- A name is claimed under its key (wschat/chat/names.py); its record keeps it as typed (n).
local members, pver, channel = KEYS[1], KEYS[2], KEYS[3]
local key, name, node, user, guest, takeover, token, moved =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local raw = redis.call('HGET', members, key)
if not raw then
  store(members, key, {h = {[node] = 1}, n = name, u = user, g = guest, t = token})
  announce(pver, channel, {{'h', name, node, user, guest}})
  return 'new'
end
local rec = cjson.decode(raw)
if rec.n ~= name then
  -- Another name that reads the same.
  return 'taken'
end
if rec.h[node] then
  rec.t = token
  store(members, key, rec)
  return 'held'
end
if user ~= '' and rec.u == user then
  rec.h[node] = 1
  store(members, key, rec)
  announce(pver, channel, {{'h', name, node, user, guest}})
  return 'shared'
end
if takeover ~= '' and rec.u == '' and rec.t == takeover then
  local old = next(rec.h)
  rec.h = {[node] = 1}
  rec.t = moved
  store(members, key, rec)
  announce(pver, channel, {{'m', name, old, node}})
  return 'moved'
end
return 'taken'
