-- One step of the create-time sweep of a tenant's listing index in one
-- bucket (Redis engine, list.rs): the next ARGV[2] members after the sweep
-- position, in index order, wrapping round at the end; those whose state
-- is gone (deleted or expired) are dropped from the index.
-- KEYS: the index (sk:{b}:list:<tenant>), the sweep position
-- (sk:{b}:listsweep:<tenant>). ARGV: the state key prefix
-- (sk:{b}:s:<tenant>:, the same slot), the step, the width of a member's time.
-- Returns how many members were dropped.
local step = tonumber(ARGV[2])
local skip = tonumber(ARGV[3]) + 2
local from = redis.call('GET', KEYS[2])
local start = '-'
if from then start = '(' .. from end
local members = redis.call('ZRANGE', KEYS[1], start, '+', 'BYLEX', 'LIMIT', 0, step)
local gone = {}
for _, m in ipairs(members) do
  if redis.call('EXISTS', ARGV[1] .. string.sub(m, skip)) == 0 then
    gone[#gone + 1] = m
  end
end
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
if #members < step then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], members[#members])
end
return #gone
