-- Remove consumers that hold nothing and have been idle a long time (workers that died or
-- were replaced), so a group's consumer list does not grow with every restart.
-- XGROUP DELCONSUMER discards the consumer's pending entries, so only a consumer with none
-- is removed, and the check and the removal happen in this one script.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] minimum idle ms, ARGV[3] the caller (never removed).
-- Returns the names removed.
local removed = {}
for _, raw in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local consumer = {}
  for i = 1, #raw, 2 do
    consumer[raw[i]] = raw[i + 1]
  end
  if consumer['pending'] == 0 and consumer['idle'] >= tonumber(ARGV[2])
      and consumer['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], consumer['name'])
    removed[#removed + 1] = consumer['name']
  end
end
return removed
