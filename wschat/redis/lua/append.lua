-- One say: the ref check, the next id, the XADD, the trim of the ref index, the publish,
-- all atomic. KEYS: seq, log, refs, refz, epoch. Returns {stored (1 new, 0 a resend of a
-- remembered ref), id, epoch}. An application's ref (application '1') is indexed under a
-- leading newline, which no name has: apart from every client's (keys.py ref_field says the
-- same). keep: the stream's bound (0: none). A ref is remembered while it was stored at most
-- window µs ago (now: the node's clock, µs) and its message is still in the stream.
local seq, log, refs, refz, epoch_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local name, text, ts, ref, keep, channel, new_epoch, node, user, guest, application, now,
  window =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], ARGV[9],
  ARGV[10], ARGV[11], tonumber(ARGV[12]), tonumber(ARGV[13])
-- Refs forgotten per say at most: more than the one a say adds, few enough to stay quick.
local FORGET = 64
local epoch = redis.call('GET', epoch_key)
if not epoch then
  epoch = new_epoch
  redis.call('SET', epoch_key, epoch)
end
local ref_key = name .. '\n' .. ref
if application == '1' then
  ref_key = '\n' .. ref_key
end
local oldest_known = now - window
if ref ~= '' then
  local found = redis.call('HGET', refs, ref_key)
  if found then
    local at = tonumber(redis.call('ZSCORE', refz, ref_key) or '0')
    if at >= oldest_known and #redis.call('XRANGE', log, found .. '-0', found .. '-0') > 0 then
      return {0, tonumber(found), epoch}
    end
  end
end
local id = redis.call('INCR', seq)
local entry = {id .. '-0', 'n', name, 't', text, 'ts', ts, 'r', ref, 'u', user, 'g', guest}
if keep > 0 then
  redis.call('XADD', log, 'MAXLEN', '~', keep, unpack(entry))
else
  redis.call('XADD', log, unpack(entry))
end
if ref ~= '' then
  -- Each ref is scored after the newest one, so that its rank is its age even within a µs.
  local newest = redis.call('ZRANGE', refz, -1, -1, 'WITHSCORES')
  local at = now
  if #newest > 0 then at = math.max(at, tonumber(newest[2]) + 1) end
  redis.call('HSET', refs, ref_key, id)
  redis.call('ZADD', refz, string.format('%d', at), ref_key)
end
-- The refs to forget are the oldest (the index is ordered by time): those out of the window,
-- and, with a keep, those past `keep` of them (their messages were trimmed).
local forget = redis.call('ZCOUNT', refz, '-inf', string.format('(%d', oldest_known))
if keep > 0 then
  forget = math.max(forget, redis.call('ZCARD', refz) - keep)
end
forget = math.min(forget, FORGET)
if forget > 0 then
  redis.call('HDEL', refs, unpack(redis.call('ZRANGE', refz, 0, forget - 1)))
  redis.call('ZREMRANGEBYRANK', refz, 0, forget - 1)
end
local announced = cjson.encode(
  {id = id, n = name, t = text, ts = ts, r = ref, o = node, u = user, g = guest})
redis.call('PUBLISH', channel, announced)
return {1, id, epoch}
