-- Take the lock and, on a single node, issue its fencing token in the same
-- atomic step; a waiting caller also joins the key's queue of waiting clients.
-- KEYS[1] lock key, KEYS[2] fence counter, KEYS[3] waiting clients,
-- KEYS[4] (on one server, not a cluster) the fence clock of batch claims
-- (see claim_all.lua);
-- ARGV[1] owner token, ARGV[2] ttl in ms, ARGV[3] the caller's client id
-- when it waits ('' when it does not), ARGV[4] '1' when more of that
-- client's waiters queue behind this one, ARGV[5] 'fence' to issue the
-- fence here, 'counter' to only report the counter (Redlock's first phase:
-- the fence is chosen over a majority and committed by commit_fence.lua),
-- 'none' to issue no fence (an unfenced acquisition).
-- Returns {1, fence or counter (0 for 'none')} when taken, {0, pttl} when
-- another owner holds it.
--
-- A counter below 10^15 was never seeded from the clock (10^15 us is
-- 2001-09-09): it is new, or an INCR created it after the counter was lost
-- (the client's MULTI fast path, see node.rs, increments the counter even
-- when its SET finds the key held). Whoever issues a fence from such a
-- counter seeds it first.
--
-- The waiting queue: a list of client ids, each once, oldest first. The
-- lock's value is its owner token, followed by '+' while the queue may be
-- non-empty; only such a release pops a client and wakes it (see
-- release.lua), so a lock nobody waits for is released without a PUBLISH.
local waiting = ARGV[3] ~= ''
local function join_queue()
  if not redis.call('LPOS', KEYS[3], ARGV[3]) then
    redis.call('RPUSH', KEYS[3], ARGV[3])
  end
  -- Waiters that stay registered refresh it with every attempt; a queue
  -- whose clients all went away disappears on its own.
  redis.call('PEXPIRE', KEYS[3], 60000)
end
local value = ARGV[1]
if waiting and ARGV[4] == '1' then
  value = value .. '+'
end
if not redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2]) then
  local holder = redis.call('GET', KEYS[1])
  if holder == ARGV[1] or holder == ARGV[1] .. '+' then
    -- This same attempt, sent again after its reply was lost (a cluster
    -- client resends on a dropped connection): the key is already ours.
    -- Renew it and issue a fence, higher than the one nobody received.
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  else
    if waiting then
      join_queue()
      -- Mark the holder's value: its release must wake the queue.
      redis.call('SETRANGE', KEYS[1], #ARGV[1], '+')
    end
    return {0, redis.call('PTTL', KEYS[1])}
  end
end
if waiting then
  if ARGV[4] == '1' then
    -- This client's next waiter keeps its place; the value is marked.
    join_queue()
  else
    redis.call('LREM', KEYS[3], 0, ARGV[3])
    if redis.call('EXISTS', KEYS[3]) == 1 then
      redis.call('SETRANGE', KEYS[1], #ARGV[1], '+')
    end
  end
end
if ARGV[5] == 'none' then
  return {1, 0}
end
-- Where a counter starts: the server clock in microseconds, or one more
-- than the last fence a batch claim issued if that is higher (a key a
-- batch fenced has no counter, and the clock may have gone back since:
-- a failover to a replica whose clock is behind, a clock stepped back).
local function start()
  local now = redis.call('TIME')
  local from = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if KEYS[4] then
    local clock = tonumber(redis.call('GET', KEYS[4]) or '0')
    if clock then
      from = math.max(from, clock + 1)
    end
  end
  return from
end
if ARGV[5] == 'counter' then
  local counter = redis.call('GET', KEYS[2])
  if not counter or tonumber(counter) < 1e15 then
    -- A node that lost its counter (restarted without persistence) reports
    -- its clock in microseconds instead of zero; see below.
    return {1, start()}
  end
  return {1, tonumber(counter)}
end
local fence = redis.call('INCR', KEYS[2])
if fence < 1e15 then
  -- The counter is new, or the server lost it (restart without persistence,
  -- failover to a replica that missed it). Seeding it with the server clock in
  -- microseconds keeps fences above every value issued before: each earlier
  -- fence is at most its seed plus one per acquisition, and no acquisition
  -- completes in under a microsecond. (The larger of the two, should the
  -- server's clock read before 2001: fences still only grow.)
  -- The counter lives for a week from its seeding (INCR keeps the ttl),
  -- then starts again from the clock: one key per lock name does not stay
  -- forever, and fences still only grow.
  fence = math.max(fence, start())
  redis.call('SET', KEYS[2], string.format('%.0f', fence), 'PX', 604800000)
end
return {1, fence}
