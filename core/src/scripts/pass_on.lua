-- A client was woken for a key it no longer waits for: it leaves the queue
-- and hands the wake-up to the next client in line, or, if the key was taken
-- meanwhile, marks the holder's value so that its release wakes the queue.
-- KEYS[1] lock key, KEYS[2] waiting clients; ARGV[1] the caller's client id,
-- ARGV[2] wake channel prefix, ARGV[3] the key as its clients name it.
redis.call('LREM', KEYS[2], 0, ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
local value = redis.call('GET', KEYS[1])
if value then
  if string.sub(value, -1) ~= '+' then
    redis.call('APPEND', KEYS[1], '+')
  end
  return 0
end
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
