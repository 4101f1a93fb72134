-- Trims the entries of a stream that every consumer group is done with,
-- keeping the newest ARGV[1] of them.
--
-- KEYS[1]: the stream. ARGV[1]: how many finished entries to keep.
-- Returns how many entries were removed.
--
-- A group is done with every entry up to its last-delivered id, except
-- those still pending (delivered, not acknowledged): the oldest pending
-- entry and the last-delivered one bound what may go. Entries past the
-- last-delivered id were never delivered and are kept too.

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function older(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end

local floor = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #group, 2 do
    info[group[i]] = group[i + 1]
  end
  local bound = info['last-delivered-id']
  if info['pending'] > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], info['name'])[2]
    if oldest and older(oldest, bound) then
      bound = oldest
    end
  end
  if floor == nil or older(bound, floor) then
    floor = bound
  end
end
if floor == nil or floor == '0-0' then
  return 0
end

local keep = tonumber(ARGV[1])
if keep > 0 then
  local finished = redis.call('XREVRANGE', KEYS[1], '(' .. floor, '-', 'COUNT', keep)
  if #finished < keep then
    return 0
  end
  floor = finished[#finished][1]
end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
