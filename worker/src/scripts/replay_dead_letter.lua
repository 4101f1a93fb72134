-- Puts a dead letter back on its stream, once: the dead letter is deleted
-- and its entry added in one step, so two operators replaying the same
-- dead letter at once add it once, and a replay cannot lose it.
--
-- KEYS[1]: the dead-letter stream. KEYS[2]: the stream.
-- ARGV[1]: the dead letter's id.
--
-- Returns the new entry's id, or false when there is no such dead letter
-- (replayed or purged already).
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
-- The entry's own id: an id given without its sequence part finds the
-- first entry of that millisecond, which is the one to delete.
local id = found[1][1]
local fields = found[1][2]
local entry = {}
for i = 1, #fields, 2 do
  local name = fields[i]
  -- What dead-lettering added; the stream's entry is the rest.
  if name ~= 'id' and name ~= 'deliveries' and name ~= 'reason' and name ~= 'replayed' then
    entry[#entry + 1] = name
    entry[#entry + 1] = fields[i + 1]
  end
end
entry[#entry + 1] = 'replayed'
entry[#entry + 1] = id
redis.call('XDEL', KEYS[1], id)
return redis.call('XADD', KEYS[2], '*', unpack(entry))
