-- Claims many keys in one call (see `batch.rs`). The client puts
-- acquire.lua's own text in front as the function `acquire(KEYS, ARGV)`,
-- so each key is taken exactly as a single acquisition takes it, and
-- commands.lua's, which reads the claims' commands.
-- For each claim: its record is read when asked; if it holds a value, the
-- claim is recorded and its commands `if recorded` run; otherwise the key
-- is taken without waiting and given a fence, and if taken its commands
-- `if acquired` run.
-- KEYS[1]: the fence clock; then four per claim: its record, its lock key,
-- its fence counter, its waiting clients.
-- ARGV, per claim: the owner token, the ttl in ms, '1' to read the record,
-- then the commands if recorded and the commands if acquired, each list as
-- commands.lua reads it.
-- Returns one reply per claim: {0, fence, value, {replies of the
-- commands}} recorded, {1, fence, {replies of the commands}} acquired (a
-- refused command answers false),
-- {2, pttl} held by another owner, {3, error} when Redis refused the claim
-- itself (a record, fence counter or clock of the wrong type): that
-- claim's key is given back if it was taken, its commands do not run, and
-- the other claims go on.
--
-- Fences: a key taken by a batch usually has no counter of its own (a
-- queue's key per message would leave one key per message behind), so the
-- call issues them from the server's clock. The call's fence is the larger
-- of the clock in microseconds minus one and one more than the last fence
-- the clock key recorded, and a key that has a counter gets one more than
-- the counter if that is larger. Taken keys are all different, so they may
-- share it. It is above every fence the key had before: those came from
-- this clock key, from the key's counter (read here), or from a counter
-- since expired or lost, which stays below the clock (acquire.lua). It is
-- below the fence of any later acquisition of the key: later calls read
-- the clock key; a later acquire.lua starts a new counter above both a
-- later clock reading and the clock key. Where that would not hold (the
-- key has a counter; the fence is not below this reading of the clock),
-- the key's counter is set to the fence.
local at = 1
local now, issued, highest
local function fence_for(counter)
  if not now then
    local time = redis.call('TIME')
    local clock = tonumber(redis.call('GET', KEYS[1]) or '0')
    if not clock then
      error('ERR the fence clock ' .. KEYS[1] .. ' is not an integer')
    end
    now = tonumber(time[1]) * 1000000 + tonumber(time[2])
    issued = math.max(clock + 1, now - 1)
    highest = issued
  end
  local fence = issued
  local own = redis.call('GET', counter)
  if own then
    local value = tonumber(own)
    if not value or value ~= math.floor(value) then
      error('ERR the fence counter ' .. counter .. ' is not an integer')
    end
    fence = math.max(fence, value + 1)
  end
  if own or fence >= now then
    -- As acquire.lua keeps a counter: a week from its last seeding.
    redis.call('SET', counter, string.format('%.0f', fence), 'PX', 604800000)
  end
  highest = math.max(highest, fence)
  return fence
end
local out = {}
for i = 1, (#KEYS - 1) / 4 do
  local k = 1 + (i - 1) * 4
  local token, ttl, check = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local if_recorded, if_acquired
  if_recorded, at = read_commands(at + 3)
  if_acquired, at = read_commands(at)
  -- A claim's reads and its acquisition in a pcall: an error answers for
  -- this claim alone, rather than end the script after earlier claims took
  -- their keys and ran their commands.
  local ok, found = pcall(function()
    if check == '1' then
      return redis.call('HMGET', KEYS[k + 1], 'fence', 'value')
    end
    return false
  end)
  local taken
  if ok and not (found and found[1] and found[2]) then
    ok, taken = pcall(function()
      local reply = acquire({KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]}, {token, ttl, '', '0', 'none'})
      if reply[1] == 1 then
        reply[2] = fence_for(KEYS[k + 3])
      end
      return reply
    end)
  end
  if not ok then
    local err = taken or found
    if type(err) == 'table' then
      err = err.err
    end
    -- The acquisition may have set the key before it failed (issuing the
    -- fence): given back, so no lock is left without a guard.
    local holder = redis.pcall('GET', KEYS[k + 2])
    if holder == token or holder == token .. '+' then
      redis.call('DEL', KEYS[k + 2])
    end
    out[i] = {3, tostring(err)}
  elseif not taken then
    out[i] = {0, found[1], found[2], (run_commands(if_recorded))}
  elseif taken[1] == 1 then
    out[i] = {1, taken[2], (run_commands(if_acquired))}
  else
    out[i] = {2, taken[2]}
  end
end
if highest then
  redis.call('SET', KEYS[1], string.format('%.0f', highest))
end
return out
