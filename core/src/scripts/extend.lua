-- Renew many leases in one call, each only while its owner token still matches.
-- KEYS[i] lock key; ARGV[2i-1] owner token, ARGV[2i] new ttl in ms.
-- Returns one 1 (renewed) or 0 (not ours any more) per key.
local renewed = {}
for i, key in ipairs(KEYS) do
  local value, token = redis.call('GET', key), ARGV[2 * i - 1]
  -- A trailing '+' marks a lock with waiting clients (see acquire.lua).
  if value == token or value == token .. '+' then
    redis.call('PEXPIRE', key, ARGV[2 * i])
    renewed[i] = 1
  else
    renewed[i] = 0
  end
end
return renewed
