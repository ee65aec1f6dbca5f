-- Count the entries MAXLEN trimmed away before a group read them, once, before the group's next
-- read jumps the gap. Run in the same MULTI as that read.
-- KEYS[1] stream, KEYS[2] hash of losses per group; ARGV[1] group.
-- Returns {entries lost now (-1: Redis lost the group's read counter), group's last-delivered ID}.
local function id_less(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  a_ms, b_ms = tonumber(a_ms), tonumber(b_ms)
  if a_ms ~= b_ms then
    return a_ms < b_ms
  end
  return tonumber(a_seq) < tonumber(b_seq)
end

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, '0-0'}
end
local group = group_info(KEYS[1], ARGV[1])
if not group then
  return {0, '0-0'}
end
local last = group['last-delivered-id']
local stream = to_table(redis.call('XINFO', 'STREAM', KEYS[1]))
if stream['length'] == 0 or not id_less(last, stream['recorded-first-entry-id']) then
  return {0, last}
end
local before_first = stream['entries-added'] - stream['length']
local read = group['entries-read']
local lost = 0
if not read then
  lost = -1
elseif read < before_first then
  lost = before_first - read
  redis.call('HINCRBY', KEYS[2], ARGV[1], lost)
end
if lost ~= 0 then
  redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', before_first)
end
return {lost, last}
