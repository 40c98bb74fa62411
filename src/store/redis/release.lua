-- The timers' release of one claim (Redis engine, SPEC §8): drops it only if
-- it is still the claim the releaser took. Another replica may have claimed
-- the session's next deadline since (a new lease), or the lease may have run
-- out and the deadline gone back and been claimed again: that claim is not
-- this releaser's to drop.
-- KEYS: the bucket's in-flight ZSET. ARGV: member, the lease (µs) its claim set.
-- Returns 1 when it dropped the claim, else 0.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
