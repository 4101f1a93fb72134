-- Lists of commands sent with a batch call (see `table.rs`), decoded in the
-- order they come: a list is its length, then each command as the number
-- of an earlier command of the call that it starts like (0 for none), how
-- many of that command's leading arguments it starts with, how many
-- arguments of its own follow, and those. A batch's commands differ in a
-- few arguments (an entry id, an outcome), so most of each is sent once.
local made = {}
local function read_commands(at)
  local list = {}
  local n = tonumber(ARGV[at])
  at = at + 1
  for i = 1, n do
    local base, kept, count = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
    at = at + 3
    local args = {}
    if base > 0 then
      local from = made[base]
      for j = 1, kept do
        args[j] = from[j]
      end
    end
    for j = 1, count do
      args[kept + j] = ARGV[at + j - 1]
    end
    at = at + count
    made[#made + 1] = args
    list[i] = args
  end
  return list, at
end
-- Runs a decoded list; returns each reply (false for a refused command)
-- and the first refusal ('' when none).
local function run_commands(list)
  local replies, failed = {}, ''
  for i, args in ipairs(list) do
    local reply = redis.pcall(unpack(args))
    if type(reply) == 'table' and reply.err then
      if failed == '' then
        failed = reply.err
      end
      reply = false
    end
    replies[i] = reply
  end
  return replies, failed
end
