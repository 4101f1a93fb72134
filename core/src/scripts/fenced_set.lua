-- Store a value only if its fence is at least the highest fence seen for the resource.
-- KEYS[1] resource hash; ARGV[1] fence (decimal, no leading zeros), ARGV[2] value,
-- ARGV[3] time to live in ms, 0 to keep the record until overwritten,
-- ARGV[4] how many commands to apply with the write, then each command as
-- its argument count followed by its arguments: the caller's effects, run
-- only when the fence is accepted, in the same atomic step as the write.
-- Returns {1, fence} when written, {0, highest} when refused.
-- Fences are compared as decimal strings so the comparison stays exact for any u64.
local highest = redis.call('HGET', KEYS[1], 'fence')
if highest then
  local fence = ARGV[1]
  if #highest > #fence or (#highest == #fence and highest > fence) then
    return {0, highest}
  end
end
local at = 5
for _ = 1, tonumber(ARGV[4]) do
  local count = tonumber(ARGV[at])
  redis.call(unpack(ARGV, at + 1, at + count))
  at = at + count + 1
end
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'value', ARGV[2])
if ARGV[3] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('PERSIST', KEYS[1])
end
return {1, ARGV[1]}
