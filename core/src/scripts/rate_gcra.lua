-- Admit one start under a rate limit: GCRA (the generic cell rate
-- algorithm) on the server's clock, with no burst tolerance.
-- KEYS[1] the theoretical arrival time (TAT), in microseconds of the
-- server clock; ARGV[1] the emission interval T = period / count, in
-- microseconds.
-- Returns {1, 0} when admitted, {0, microseconds until a start is} when not.
--
-- A start is admitted when the TAT is not in the future; the TAT then
-- moves to now + T. So admitted starts are at least T apart on the server's
-- clock, and any window of one period (count * T) holds at most count of
-- them, however many clients ask at once: the check and the move are one
-- atomic step. The key lives one interval past its TAT, then nothing stays.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > now then
  return {0, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', now + interval), 'PX',
  math.floor(interval / 1000) + 1)
return {1, 0}
