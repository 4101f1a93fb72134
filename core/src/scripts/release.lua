-- Delete the lock only while the owner token matches, then wake waiters.
-- KEYS[1] lock key; ARGV[1] owner token, ARGV[2] release notice channel.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], '')
return 1
