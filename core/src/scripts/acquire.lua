-- Take the lock and issue its fencing token in one atomic step.
-- KEYS[1] lock key, KEYS[2] fence counter; ARGV[1] owner token, ARGV[2] ttl in ms.
-- Returns {1, fence} when taken, {0, pttl} when another owner holds it.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('PTTL', KEYS[1])}
end
local fence = redis.call('INCR', KEYS[2])
if fence == 1 then
  -- The counter is new, or the server lost it (restart without persistence,
  -- failover to a replica that missed it). Seeding it with the server clock in
  -- microseconds keeps fences above every value issued before: each earlier
  -- fence is at most its seed plus one per acquisition, and no acquisition
  -- completes in under a microsecond.
  -- The counter lives for a week from its seeding (INCR keeps the ttl),
  -- then starts again from the clock: one key per lock name does not stay
  -- forever, and fences still only grow.
  local now = redis.call('TIME')
  fence = tonumber(now[1]) * 1000000 + tonumber(now[2])
  redis.call('SET', KEYS[2], string.format('%.0f', fence), 'PX', 604800000)
end
return {1, fence}
