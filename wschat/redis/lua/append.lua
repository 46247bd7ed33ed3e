-- One say: the ref check, the next id, the XADD, the trim of the ref index, the publish,
-- all atomic. KEYS: seq, log, refs, refz, epoch. Returns {stored (1 new, 0 a resend of a
-- kept ref), id, epoch}. An application's ref (application '1') is indexed under a leading
-- newline, which no name has: apart from every client's (keys.py ref_field says the same).
local seq, log, refs, refz, epoch_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local name, text, ts, ref, keep, channel, new_epoch, node, user, guest, application =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], ARGV[9],
  ARGV[10], ARGV[11]
local epoch = redis.call('GET', epoch_key)
if not epoch then
  epoch = new_epoch
  redis.call('SET', epoch_key, epoch)
end
local ref_key = name .. '\n' .. ref
if application == '1' then
  ref_key = '\n' .. ref_key
end
if ref ~= '' then
  local found = redis.call('HGET', refs, ref_key)
  if found and #redis.call('XRANGE', log, found .. '-0', found .. '-0') > 0 then
    return {0, tonumber(found), epoch}
  end
end
local id = redis.call('INCR', seq)
redis.call(
  'XADD', log, 'MAXLEN', '~', keep, id .. '-0',
  'n', name, 't', text, 'ts', ts, 'r', ref, 'u', user, 'g', guest)
if ref ~= '' then
  redis.call('HSET', refs, ref_key, id)
  redis.call('ZADD', refz, id, ref_key)
end
local oldest = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
if #oldest > 0 then
  local first = tonumber(string.match(oldest[1][1], '^(%d+)'))
  local gone = redis.call('ZRANGEBYSCORE', refz, '-inf', '(' .. first)
  if #gone > 0 then
    redis.call('HDEL', refs, unpack(gone))
    redis.call('ZREMRANGEBYSCORE', refz, '-inf', '(' .. first)
  end
end
local announced = cjson.encode(
  {id = id, n = name, t = text, ts = ts, r = ref, o = node, u = user, g = guest})
redis.call('PUBLISH', channel, announced)
return {1, id, epoch}
