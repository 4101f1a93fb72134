-- Store a value only if its fence is at least the highest fence seen for the
-- resource and, when an owner token is given, only while that token still
-- holds the lock; then apply the caller's effects.
-- KEYS[1] resource hash, KEYS[2] lock key (when ARGV[4] is not empty);
-- ARGV[1] fence (decimal, no leading zeros), ARGV[2] value, ARGV[3] time to
-- live in ms (0: keep until overwritten), ARGV[4] owner token or '',
-- ARGV[5] commit id or '', ARGV[6] how many commands follow, then each as
-- its argument count and its arguments (checked by the caller to fit
-- `unpack`, so that no command fails the script after the record).
-- Returns {1, fence, ''} when written (or {1, fence, error} when an effect
-- failed after the record was written), {0, highest} when a higher fence was
-- seen, {2, ''} when the token no longer holds the lock.
-- Fences are compared as decimal strings so the comparison stays exact for any u64.
-- A commit sent again after its reply was lost finds its id on the record:
-- it was applied once, and is not applied again, even if the lock has
-- since expired; it gets the first delivery's answer.
-- The highest fence is read with the commit id: one read of the record,
-- and nothing writes it before the comparison below.
local highest
if ARGV[5] ~= '' then
  local applied = redis.call('HMGET', KEYS[1], 'commit', 'failed', 'fence')
  if applied[1] == ARGV[5] then
    return {1, ARGV[1], applied[2] or ''}
  end
  highest = applied[3]
else
  highest = redis.call('HGET', KEYS[1], 'fence')
end
if ARGV[4] ~= '' then
  -- A trailing '+' marks a lock with waiting clients (see acquire.lua).
  local holder = redis.call('GET', KEYS[2])
  if holder ~= ARGV[4] and holder ~= ARGV[4] .. '+' then
    return {2, ''}
  end
end
if highest then
  local fence = ARGV[1]
  if #highest > #fence or (#highest == #fence and highest > fence) then
    return {0, highest}
  end
end
-- The record first: an effect that fails cannot leave the success unrecorded
-- (and so the run to be repeated and the earlier effects applied twice).
redis.call('HSET', KEYS[1], 'fence', ARGV[1], 'value', ARGV[2], 'commit', ARGV[5], 'failed', '')
if ARGV[3] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('PERSIST', KEYS[1])
end
local failed = ''
local at = 7
for _ = 1, tonumber(ARGV[6]) do
  local count = tonumber(ARGV[at])
  local reply = redis.pcall(unpack(ARGV, at + 1, at + count))
  if type(reply) == 'table' and reply.err and failed == '' then
    failed = reply.err
  end
  at = at + count + 1
end
if failed ~= '' then
  redis.call('HSET', KEYS[1], 'failed', failed)
end
return {1, ARGV[1], failed}
