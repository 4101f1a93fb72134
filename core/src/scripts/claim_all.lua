-- Claims many keys in one call (see `batch.rs`). The client puts
-- acquire.lua's own text in front as the function `acquire(KEYS, ARGV)`,
-- so each key is taken exactly as a single acquisition takes it.
-- For each claim: its record is read when asked; if it holds a value, the
-- claim is recorded and its commands `if recorded` run; otherwise the key
-- is taken without waiting, with its fence, and if taken its commands
-- `if acquired` run.
-- KEYS, four per claim: its record, its lock key, its fence counter, its
-- waiting clients.
-- ARGV, per claim: the owner token, the ttl in ms, '1' to read the record,
-- then the commands if recorded and the commands if acquired, each list as
-- its length then each command as its argument count and its arguments.
-- Returns one reply per claim: {0, fence, value, {replies of the
-- commands}} recorded, {1, fence, {replies of the commands}} acquired (a
-- refused command answers false),
-- {2, pttl} held by another owner, {3, error} when Redis refused the claim
-- itself (a record or fence counter of the wrong type): that claim's key
-- is given back if it was taken, its commands do not run, and the other
-- claims go on.
local at = 1
local function commands()
  local list = {}
  local n = tonumber(ARGV[at])
  at = at + 1
  for i = 1, n do
    local count = tonumber(ARGV[at])
    list[i] = {at + 1, at + count}
    at = at + count + 1
  end
  return list
end
local function run(list)
  local replies = {}
  for i, span in ipairs(list) do
    local reply = redis.pcall(unpack(ARGV, span[1], span[2]))
    if type(reply) == 'table' and reply.err then
      reply = false
    end
    replies[i] = reply
  end
  return replies
end
local out = {}
for i = 1, #KEYS / 4 do
  local k = (i - 1) * 4
  local token, ttl, check = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  at = at + 3
  local if_recorded = commands()
  local if_acquired = commands()
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
    ok, taken = pcall(acquire, {KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]}, {token, ttl, '', '0', 'fence'})
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
    out[i] = {0, found[1], found[2], run(if_recorded)}
  elseif taken[1] == 1 then
    out[i] = {1, taken[2], run(if_acquired)}
  else
    out[i] = {2, taken[2]}
  end
end
return out
