-- The timers' claim of one bucket's due deadlines (Redis engine, SPEC §8).
-- KEYS: the bucket's deadlines ZSET, its in-flight ZSET. ARGV: lease (µs), limit (the most
-- members moved each way; 0 moves none and still returns the head).
-- Returns { due members, earliest remaining deadline or false, the lease (µs) the due
-- members got, how many lease-expired claims went back to be claimed again }: the lease
-- names this claim, so that its release drops only it (release.lua).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lease = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
-- Moves members from one ZSET to another at one score, in two calls
-- (not two per member: under a burst this script is much of Redis's load).
local function move(from, to, members, score, flag)
  if #members == 0 then return end
  redis.call('ZREM', from, unpack(members))
  local args = {}
  for i, m in ipairs(members) do
    args[2 * i - 1] = score
    args[2 * i] = m
  end
  if flag then
    redis.call('ZADD', to, flag, unpack(args))
  else
    redis.call('ZADD', to, unpack(args))
  end
end
-- Lease-expired claims go back (a re-armed deadline keeps its own score).
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
move(KEYS[2], KEYS[1], expired, now, 'NX')
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
move(KEYS[1], KEYS[2], due, now + lease, nil)
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local lease_head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local next = head[2]
if lease_head[2] and (not next or tonumber(lease_head[2]) < tonumber(next)) then next = lease_head[2] end
return { due, next or false, now + lease, #expired }
