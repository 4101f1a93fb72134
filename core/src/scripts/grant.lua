-- Redlock, first phase on one node: take the lock and report the node's fence counter.
-- KEYS[1] lock key, KEYS[2] fence counter; ARGV[1] owner token, ARGV[2] ttl in ms.
-- Returns {1, counter} when taken, {0, pttl} when another owner holds it.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('PTTL', KEYS[1])}
end
local counter = redis.call('GET', KEYS[2])
if not counter then
  -- A node that lost its counter (restarted without persistence) reports
  -- its clock in microseconds instead of zero; see acquire.lua.
  local now = redis.call('TIME')
  return {1, tonumber(now[1]) * 1000000 + tonumber(now[2])}
end
return {1, tonumber(counter)}
