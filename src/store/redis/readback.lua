-- A commit whose EXEC answer was lost reads back what it wrote (Redis
-- engine, outcome.rs) and makes sure that EXEC can no longer run later: if
-- it still waits unread on its connection, or in a proxy, a write to each
-- state it watched fails it (WATCH), so the states read here stay the answer.
-- The writes change nothing: the same value with its TTL (SET KEEPTTL), or,
-- for a missing state, a SET then a DEL.
-- KEYS: the states the commit wrote. Returns their values (nil: missing).
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if v then
    redis.call('SET', key, v, 'KEEPTTL')
  else
    redis.call('SET', key, '')
    redis.call('DEL', key)
  end
  out[i] = v
end
return out
