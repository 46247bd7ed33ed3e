-- KEYS: members, pver. Returns {pver, the members hash}: a snapshot and its number.
return {redis.call('GET', KEYS[2]) or '0', redis.call('HGETALL', KEYS[1])}
