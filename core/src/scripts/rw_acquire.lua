-- Take a read-write lock for reading or writing, issuing a fence from its
-- counter in the same atomic step; a waiting caller that finds it taken
-- joins its queue of waiting clients.
-- KEYS[1] readers (sorted set: owner token -> lease expiry, server ms),
-- KEYS[2] writer (the writing owner's token, with the lease as its ttl),
-- KEYS[3] the waiting writer's intent, KEYS[4] fence counter, KEYS[5]
-- waiting clients;
-- ARGV[1] owner token, ARGV[2] ttl in ms, ARGV[3] 'read' or 'write',
-- ARGV[4] the request's id (the same over all its attempts), ARGV[5] the
-- caller's client id when it waits ('' when it does not).
-- Returns {1, fence} when taken, {0, ms until it may be free} when not.
--
-- Readers overlap; a writer excludes readers and writers. A waiting writer
-- that finds the lock taken leaves its intent, which keeps new readers out
-- until it has written (or its intent lapses, 3 s after its last attempt,
-- if it gave up or died), so a stream of readers cannot starve it.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function wait_for(ms)
  if ARGV[5] ~= '' then
    if not redis.call('LPOS', KEYS[5], ARGV[5]) then
      redis.call('RPUSH', KEYS[5], ARGV[5])
    end
    redis.call('PEXPIRE', KEYS[5], 60000)
  end
  return {0, math.max(ms, 1)}
end
local function add_reader()
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], tonumber(last[2]) - now)
end
-- Takes the lock, or answers why not (nil when taken).
local function take()
  local writer_left = redis.call('PTTL', KEYS[2])
  if writer_left > 0 and redis.call('GET', KEYS[2]) ~= ARGV[1] then
    if ARGV[3] == 'write' and ARGV[5] ~= '' and redis.call('EXISTS', KEYS[3]) == 0 then
      redis.call('SET', KEYS[3], ARGV[4], 'PX', 3000)
    end
    return wait_for(writer_left)
  end
  local intent = redis.call('GET', KEYS[3])
  if ARGV[3] == 'read' then
    if intent then
      return wait_for(redis.call('PTTL', KEYS[3]))
    end
    add_reader()
  else
    if intent and intent ~= ARGV[4] then
      return wait_for(redis.call('PTTL', KEYS[3]))
    end
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    if first[1] then
      if ARGV[5] ~= '' then
        redis.call('SET', KEYS[3], ARGV[4], 'PX', 3000)
      end
      return wait_for(tonumber(first[2]) - now)
    end
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
    if intent then
      redis.call('DEL', KEYS[3])
    end
  end
end
-- This same attempt, sent again after its reply was lost (a cluster client
-- resends on a dropped connection): the lock is already ours. Renew it and
-- issue a fence, higher than the one nobody received.
if ARGV[3] == 'read' and redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  add_reader()
elseif ARGV[3] == 'write' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  local refused = take()
  if refused then
    return refused
  end
end
if ARGV[5] ~= '' then
  redis.call('LREM', KEYS[5], 0, ARGV[5])
end
local fence = redis.call('INCR', KEYS[4])
if fence == 1 then
  fence = tonumber(time[1]) * 1000000 + tonumber(time[2])
  redis.call('SET', KEYS[4], string.format('%.0f', fence), 'PX', 604800000)
end
return {1, fence}
