-- Make this node's holdings in a room exactly the names given (name, user, guest, token...):
-- after a reconnect (Redis may have lost them, or releases were lost on the way).
-- KEYS: members, pver, channel. Returns the names another node holds now.
local members, pver, channel = KEYS[1], KEYS[2], KEYS[3]
local node = ARGV[1]
local want = {}
for i = 2, #ARGV, 4 do want[ARGV[i]] = i end
local changes, lost, have = {}, {}, {}
local all = redis.call('HGETALL', members)
for i = 1, #all, 2 do
  local name, rec = all[i], cjson.decode(all[i + 1])
  if rec.h[node] then
    if want[name] then
      have[name] = true
    else
      rec.h[node] = nil
      store(members, name, rec)
      changes[#changes + 1] = {'r', name, node}
    end
  end
end
for name, i in pairs(want) do
  if not have[name] then
    local user, guest, token = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local raw = redis.call('HGET', members, name)
    local rec = raw and cjson.decode(raw)
    if not rec then
      store(members, name, {h = {[node] = 1}, u = user, g = guest, t = token})
      changes[#changes + 1] = {'h', name, node, user, guest}
    elseif user ~= '' and rec.u == user then
      rec.h[node] = 1
      store(members, name, rec)
      changes[#changes + 1] = {'h', name, node, user, guest}
    else
      lost[#lost + 1] = name
    end
  end
end
announce(pver, channel, changes)
return lost
