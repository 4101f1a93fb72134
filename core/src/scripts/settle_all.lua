-- Settles many held locks in one call (see `batch.rs`). The client puts
-- fenced_set.lua's and release.lua's own text in front as the functions
-- `commit(KEYS, ARGV)` and `release(KEYS, ARGV)`, so each record is
-- written and each lock given back exactly as on their own, and
-- commands.lua's, which reads the items' commands.
-- For each item: its record is committed, if it has one; the lock is
-- released; then its commands `if committed` run when the record was
-- written, its commands `otherwise` when it was not (or there was none).
-- Its commands `together` (if committed) run once for the whole call, at
-- its end: each is one of the call's shared commands, completed with a
-- last argument per item; the shared command runs once with every last
-- argument (an XACK of every entry acknowledged, an HDEL of every field).
-- A copy of this call sent again after its reply was lost finds each
-- record's commit id: the record is not written and no effect applied
-- again (see fenced_set.lua), and its commands run again (they must bear
-- it: an XACK, an HDEL; a history entry is written twice).
-- The lock key is read once per item: the holder it names tells the commit
-- whether the lock holds (fenced_set.lua would read it again) and, when no
-- effect ran in between, the release what it would find.
-- KEYS, three per item: its record, its lock key, its waiting clients.
-- ARGV[1]: the wake channel prefix; ARGV[2]: how many shared commands
-- follow, each as its argument count and its arguments; then per item: the
-- owner token, the key as its clients name it, '1' when a record is
-- written and then its fence, value, ttl in ms (0: keep), commit id and
-- effects (their count, then each as its argument count and its
-- arguments); then the commands if committed and the commands otherwise,
-- each list as commands.lua reads it; then the commands together: their count, then each as the
-- index of its shared command and its last argument.
-- Returns per item {code, fence or highest, refused effect, released,
-- refused command}: code 'A' written, 'R' a higher fence was seen, 'N'
-- the token no longer held the lock, '-' no record, 'E' Redis refused the
-- record itself (nothing written; its error in place of the refused
-- effect), which answers for that item alone.
local shared = {}
local at = 3
for g = 1, tonumber(ARGV[2]) do
  local count = tonumber(ARGV[at])
  shared[g] = {first = at + 1, last = at + count, tails = {}, items = {}}
  at = at + count + 1
end
local function span_of_commands()
  local first = at
  local n = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, n do
    at = at + tonumber(ARGV[at]) + 1
  end
  return first, at - 1
end
local out = {}
for i = 1, #KEYS / 3 do
  local k = (i - 1) * 3
  local token, line, has_record = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  at = at + 3
  local holder = redis.call('GET', KEYS[k + 2])
  local holds = holder == token or holder == token .. '+'
  local code, fence, refused = '-', '', ''
  local effects = false
  if has_record == '1' then
    local first = at
    at = at + 4
    local effects_from = at
    effects = tonumber(ARGV[at]) > 0
    span_of_commands()
    -- An empty owner skips fenced_set.lua's own read of the lock: it holds.
    local owner = token
    if holds then
      owner = ''
    end
    -- Copied one by one: all the effects' arguments at once may not fit
    -- `unpack` (each effect alone does; see fenced_set.lua).
    local args = {ARGV[first], ARGV[first + 1], ARGV[first + 2], owner, ARGV[first + 3]}
    for j = effects_from, at - 1 do
      args[#args + 1] = ARGV[j]
    end
    local ok, reply = pcall(commit, {KEYS[k + 1], KEYS[k + 2]}, args)
    if not ok then
      code, refused = 'E', tostring(type(reply) == 'table' and reply.err or reply)
    elseif reply[1] == 1 then
      code, fence, refused = 'A', reply[2], reply[3]
    elseif reply[1] == 0 then
      code, fence = 'R', reply[2]
    else
      code = 'N'
    end
  end
  local if_committed, otherwise
  if_committed, at = read_commands(at)
  otherwise, at = read_commands(at)
  local together = at
  at = at + 1 + 2 * tonumber(ARGV[at])
  local released
  if effects or holder == token .. '+' then
    -- An effect may have touched the lock key; waiting clients are woken.
    released = release({KEYS[k + 2], KEYS[k + 3]}, {token, ARGV[1], line})
  elseif holder == token then
    redis.call('DEL', KEYS[k + 2])
    released = 1
  else
    released = 0
  end
  local failed
  if code == 'A' then
    failed = select(2, run_commands(if_committed))
    for p = together + 1, at - 1, 2 do
      local group = shared[tonumber(ARGV[p])]
      group.tails[#group.tails + 1] = ARGV[p + 1]
      group.items[#group.items + 1] = i
    end
  else
    failed = select(2, run_commands(otherwise))
  end
  out[i] = {code, fence, refused, released, failed}
end
-- Lua's unpack takes about 8000 values: the last arguments go in chunks.
for _, group in ipairs(shared) do
  local from = 1
  while from <= #group.tails do
    local to = math.min(from + 999, #group.tails)
    local args = {unpack(ARGV, group.first, group.last)}
    for t = from, to do
      args[#args + 1] = group.tails[t]
    end
    local reply = redis.pcall(unpack(args))
    if type(reply) == 'table' and reply.err then
      for t = from, to do
        local item = out[group.items[t]]
        if item[5] == '' then
          item[5] = reply.err
        end
      end
    end
    from = to + 1
  end
end
return out
