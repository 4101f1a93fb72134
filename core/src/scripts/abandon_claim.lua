-- Gives back a key a claim_all call may have taken when its reply never
-- came (see `batch.rs`). The client puts release.lua's own text in front
-- as the function `release(KEYS, ARGV)`. Only if the token still held the
-- key (so the call did run and take it) the claim's commands
-- `if_abandoned` run, in the same atomic step: they undo what its
-- commands `if_acquired` did.
-- KEYS: the lock key, its waiting clients; ARGV[1 .. 3] release.lua's;
-- ARGV[4] how many commands follow, then each as its argument count and
-- its arguments.
-- Returns 1 when released, 0 when the token did not hold the key.
local released = release(KEYS, {ARGV[1], ARGV[2], ARGV[3]})
if released == 1 then
  local at = 5
  for _ = 1, tonumber(ARGV[4]) do
    local count = tonumber(ARGV[at])
    redis.pcall(unpack(ARGV, at + 1, at + count))
    at = at + count + 1
  end
end
return released
