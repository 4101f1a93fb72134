-- Give one permit back, only while the owner token still holds it, and wake
-- the longest-waiting client that is still listening.
-- KEYS[1] holders, KEYS[2] waiting clients; ARGV[1] owner token, ARGV[2]
-- wake channel prefix (a client id completes it), ARGV[3] the name the
-- wake-up carries.
-- Returns 1 when released, 0 (changing nothing) when the token holds no
-- permit: released before, or its lease ran out.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expires then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(expires) <= now then
  return 0
end
-- A refused PUBLISH (a user without the channel permission) ends the loop
-- without failing the script; the waiters find the permit at their next poll.
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
