-- Make this node's holdings in a room exactly the names given (key, name, user, guest,
-- token...): after a reconnect (Redis may have lost them, or releases were lost on the way).
-- KEYS: members, pver, channel. Returns the names another node holds now.
local members, pver, channel = KEYS[1], KEYS[2], KEYS[3]
local node = ARGV[1]
local want = {}
for i = 2, #ARGV, 5 do want[ARGV[i]] = i end
local changes, lost, have = {}, {}, {}
local all = redis.call('HGETALL', members)
for i = 1, #all, 2 do
  local key, rec = all[i], cjson.decode(all[i + 1])
  if rec.h[node] then
    if want[key] then
      have[key] = true
    else
      rec.h[node] = nil
      store(members, key, rec)
      changes[#changes + 1] = {'r', rec.n, node}
    end
  end
end
for key, i in pairs(want) do
  if not have[key] then
    local name, user, guest, token = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local raw = redis.call('HGET', members, key)
    local rec = raw and cjson.decode(raw)
    if not rec then
      store(members, key, {h = {[node] = 1}, n = name, u = user, g = guest, t = token})
      changes[#changes + 1] = {'h', name, node, user, guest}
    elseif user ~= '' and rec.u == user and rec.n == name then
      rec.h[node] = 1
      store(members, key, rec)
      changes[#changes + 1] = {'h', name, node, user, guest}
    else
      lost[#lost + 1] = name
    end
  end
end
announce(pver, channel, changes)
return lost
