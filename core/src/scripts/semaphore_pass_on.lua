-- A client was woken for a semaphore it no longer waits for: it leaves the
-- queue and hands the wake-up to the next client in line, which tries and
-- queues again if the permit is gone meanwhile.
-- KEYS[1] waiting clients; ARGV[1] the caller's client id, ARGV[2] wake
-- channel prefix, ARGV[3] the name the wake-up carries.
redis.call('LREM', KEYS[1], 0, ARGV[1])
while true do
  local client = redis.call('LPOP', KEYS[1])
  if not client then
    return 0
  end
  local reached = redis.pcall('PUBLISH', ARGV[2] .. client, ARGV[3])
  if type(reached) ~= 'number' or reached > 0 then
    return 1
  end
end
