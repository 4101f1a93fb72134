-- The tail of a script that carries commands along: the client puts the
-- text of another of soloist's scripts in front of it as the function
-- `inner(KEYS, ARGV)` (see `along.rs`), so that script runs as it always
-- does, and the commands sent along run right after it, in the same
-- atomic step.
-- KEYS: the inner script's keys. ARGV[1]: how many arguments the inner
-- script takes (n), ARGV[2 .. n + 1] those arguments, ARGV[n + 2] how many
-- commands follow, then each as its argument count and its arguments
-- (checked by the caller to fit `unpack`).
-- Returns {the inner script's reply, the first refusal of a command or ''}:
-- a refused command changes nothing, and the ones after it still run.
local n = tonumber(ARGV[1])
local reply = inner(KEYS, {unpack(ARGV, 2, n + 1)})
local failed = ''
local at = n + 3
for _ = 1, tonumber(ARGV[n + 2]) do
  local count = tonumber(ARGV[at])
  local answer = redis.pcall(unpack(ARGV, at + 1, at + count))
  if type(answer) == 'table' and answer.err and failed == '' then
    failed = answer.err
  end
  at = at + count + 1
end
return {reply, failed}
