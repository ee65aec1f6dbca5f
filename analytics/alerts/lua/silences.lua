-- Add or remove a silence and record it on the alerts stream, at once.
-- KEYS: 1 alerts stream, 2 silences hash.
-- ARGV: 1 'add' | 'remove', 2 silence id, 3 silence JSON (add), 4 most silences kept (add),
--       5 alerts stream cap, then the fields of the alerts stream record, name and value.
-- Returns the alerts stream entry ID; false when the id is taken (add), unknown (remove), or
-- the hash holds its most silences already.
local alerts, silences = KEYS[1], KEYS[2]
local action, id, document, most, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if action == 'add' then
  if redis.call('HLEN', silences) >= tonumber(most) then
    return false
  end
  if redis.call('HSETNX', silences, id, document) == 0 then
    return false
  end
elseif redis.call('HDEL', silences, id) == 0 then
  return false
end
return redis.call('XADD', alerts, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 6))
