-- Delete the lock only while the owner token matches; if clients queued for
-- it meanwhile, wake the longest-waiting one that is still listening.
-- KEYS[1] lock key, KEYS[2] waiting clients; ARGV[1] owner token,
-- ARGV[2] wake channel prefix (a client id completes it), ARGV[3] the key
-- as its clients name it.
-- Returns 1 when released, 0 when the token did not hold the lock.
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if value ~= ARGV[1] .. '+' then
  return 0
end
redis.call('DEL', KEYS[1])
-- A client that is gone has no subscriber left: PUBLISH reaches nobody, and
-- the next one in line is tried.
-- A refused PUBLISH (a user without the channel permission) ends the
-- loop without failing the script: the key is gone either way, and the
-- waiters find it at their next poll.
while true do
  local client = redis.call('LPOP', KEYS[2])
  if not client then
    break
  end
  local reached = redis.pcall('PUBLISH', ARGV[2] .. client, ARGV[3])
  if type(reached) ~= 'number' or reached > 0 then
    break
  end
end
return 1
