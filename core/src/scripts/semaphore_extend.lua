-- Renew many permits in one call, each only while its owner still holds it.
-- KEYS[i] holders of a semaphore; ARGV[2i-1] owner token, ARGV[2i] new ttl
-- in ms. Returns one 1 (renewed) or 0 (not held any more) per permit.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local renewed = {}
for i, key in ipairs(KEYS) do
  local token, ttl = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local expires = redis.call('ZSCORE', key, token)
  if expires and tonumber(expires) > now then
    redis.call('ZADD', key, 'XX', now + ttl, token)
    if redis.call('PTTL', key) < ttl then
      redis.call('PEXPIRE', key, ttl)
    end
    renewed[i] = 1
  else
    if expires then
      redis.call('ZREM', key, token)
    end
    renewed[i] = 0
  end
end
return renewed
