-- Take one permit of a semaphore and issue its fencing token in the same
-- atomic step; a waiting caller that finds every permit held joins the
-- semaphore's queue of waiting clients.
-- KEYS[1] holders (sorted set: owner token -> lease expiry, server ms),
-- KEYS[2] fence counter, KEYS[3] waiting clients;
-- ARGV[1] owner token, ARGV[2] ttl in ms, ARGV[3] permits, ARGV[4] the
-- caller's client id when it waits ('' when it does not), ARGV[5] '1' when
-- more of that client's waiters queue behind this one.
-- Returns {1, fence} when taken, {0, ms until the first holder's lease
-- runs out} when every permit is held.
--
-- Each holder is a lease of its own, scored by when it runs out on the
-- server's clock: a holder that dies stops renewing and its permit comes
-- back when its score passes, here, without anyone releasing it. There is
-- no counter to leak or inflate: the permits in use are the members.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[2])
local permits = tonumber(ARGV[3])
local waiting = ARGV[4] ~= ''
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function join_queue()
  if not redis.call('LPOS', KEYS[3], ARGV[4]) then
    redis.call('RPUSH', KEYS[3], ARGV[4])
  end
  redis.call('PEXPIRE', KEYS[3], 60000)
end
-- This same attempt sent again after its reply was lost finds its permit
-- taken already: renew it and issue a fence, higher than the one nobody
-- received.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= permits then
    if waiting then
      join_queue()
    end
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {0, tonumber(first[2]) - now}
  end
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
-- The set lives as long as its longest lease, so a semaphore whose holders
-- all died leaves nothing behind.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], tonumber(last[2]) - now)
if waiting then
  if ARGV[5] == '1' then
    join_queue()
  else
    redis.call('LREM', KEYS[3], 0, ARGV[4])
  end
end
-- Fences as acquire.lua issues them: a new or lost counter is seeded from
-- the server clock in microseconds and lives a week.
local fence = redis.call('INCR', KEYS[2])
if fence == 1 then
  fence = tonumber(time[1]) * 1000000 + tonumber(time[2])
  redis.call('SET', KEYS[2], string.format('%.0f', fence), 'PX', 604800000)
end
return {1, fence}
