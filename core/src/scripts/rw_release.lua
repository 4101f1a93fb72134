-- Give a read-write lock back, only while the owner token holds it, and
-- wake every waiting client still listening: the readers among them may
-- all come in together.
-- KEYS[1] readers, KEYS[2] writer, KEYS[3] waiting clients; ARGV[1] owner
-- token, ARGV[2] 'read' or 'write', ARGV[3] wake channel prefix (a client
-- id completes it), ARGV[4] the name the wake-ups carry.
-- Returns 1 when released, 0 (changing nothing) when the token held nothing.
if ARGV[2] == 'read' then
  if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
    return 0
  end
  -- Only the last reader out can let anyone in.
  if redis.call('ZCARD', KEYS[1]) > 0 then
    return 1
  end
else
  if redis.call('GET', KEYS[2]) ~= ARGV[1] then
    return 0
  end
  redis.call('DEL', KEYS[2])
end
local clients = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[3])
for _, client in ipairs(clients) do
  -- A refused PUBLISH (no channel permission) stops nothing: the waiters poll.
  redis.pcall('PUBLISH', ARGV[3] .. client, ARGV[4])
end
return 1
