-- Redlock, second phase on one node: raise the fence counter to the chosen
-- fence, only while this node still holds the lock for the caller's token.
-- KEYS[1] lock key, KEYS[2] fence counter; ARGV[1] owner token, ARGV[2] fence.
-- Returns 1 when the node holds the counter at or above the fence, else 0.
-- A trailing '+' marks a lock with waiting clients (see acquire.lua).
local holder = redis.call('GET', KEYS[1])
if holder ~= ARGV[1] and holder ~= ARGV[1] .. '+' then
  return 0
end
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter < tonumber(ARGV[2]) then
  -- Kept a week, like a single node's counter; see acquire.lua.
  redis.call('SET', KEYS[2], ARGV[2], 'PX', 604800000)
end
return 1
