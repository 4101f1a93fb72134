-- Asks for a run of a cron job now: adds `<ms>:<job>` to the triggers, its
-- score the Redis server's time in ms, and forgets triggers older than the
-- keep time. Two triggers of one job in the same millisecond are one.
--
-- KEYS[1]: the triggers. ARGV[1]: how long triggers are kept, in ms.
-- ARGV[2]: the job's name.
--
-- Returns the trigger's time in Unix ms.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms, ms .. ':' .. ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return ms
