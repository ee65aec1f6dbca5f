-- Create a consumer group unless it exists, with its read counter set so that entries trimmed
-- before the group existed are not mistaken later for entries it lost.
-- It also records in the group's ledger how many entries the stream had taken before the
-- group's start, so `telemetry status` can balance the ledger against the stream.
-- KEYS[1] stream, KEYS[2] the group's ledger; ARGV[1] group; ARGV[2] start ID ("0" for all
-- history, "$" for new only). Returns 1 when created, 0 when it already existed.
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], ARGV[2], 'MKSTREAM')
if type(created) == 'table' and created.err then
  if string.find(created.err, 'BUSYGROUP', 1, true) then
    return 0
  end
  return redis.error_reply(created.err)
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local stream = {}
for i = 1, #info, 2 do
  stream[info[i]] = info[i + 1]
end
local already_read = stream['entries-added']
if ARGV[2] ~= '$' then
  already_read = already_read - stream['length']
end
redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], ARGV[2], 'ENTRIESREAD', already_read)
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'entries_before_start', already_read)
return 1
