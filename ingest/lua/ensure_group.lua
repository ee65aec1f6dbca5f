-- Create a consumer group unless it exists, with its read counter set so that entries trimmed
-- before the group existed are not mistaken later for entries it lost, and record in the
-- group's ledger how many entries the stream had taken before the group's start, so
-- `telemetry status` can balance the ledger against the stream.
--
-- For a group that exists and whose handler keeps a ledger, make the group's read counter
-- (entries-read) agree with the ledger. Redis does not keep that counter through a restart from
-- its append-only file: the file holds a group's reads as XCLAIM ... LASTID, without the count,
-- so the counter comes back empty or as it stood at the file's last rewrite. A wrong counter
-- shows as a wrong lag, a ledger that does not balance, and entries counted as trimmed that
-- were not. Every entry a group has read is in exactly one place: taken before its start,
-- settled (ledger), dead-lettered, lost to trimming, or pending; the counter is their sum.
--
-- KEYS[1] stream, KEYS[2] the group's ledger, KEYS[3] losses per group, KEYS[4] dead letters
-- per group; ARGV[1] group; ARGV[2] start ID ("0" for all history, "$" for new only).
-- Returns {1} when created; {0, last-delivered ID} when it existed; {0, last-delivered ID,
-- counter before (-1: none), counter now} when it existed and its counter was repaired.
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], ARGV[2], 'MKSTREAM')
if type(created) == 'table' and created.err then
  if not string.find(created.err, 'BUSYGROUP', 1, true) then
    return redis.error_reply(created.err)
  end
  local group = group_info(KEYS[1], ARGV[1])
  local last = group['last-delivered-id']
  local ledger = to_table(redis.call('HGETALL', KEYS[2]))
  local read = tonumber(ledger['entries_before_start'])
  local keeps_ledger = false
  for name, count in pairs(ledger) do
    if string.sub(name, 1, 8) == 'settled:' then
      keeps_ledger = true
      read = read and read + tonumber(count)
    end
  end
  if not keeps_ledger or not read then
    return {0, last}
  end
  read = read + (tonumber(redis.call('HGET', KEYS[3], ARGV[1])) or 0)
    + (tonumber(redis.call('HGET', KEYS[4], ARGV[1])) or 0)
    + redis.call('XPENDING', KEYS[1], ARGV[1])[1]
  local had = group['entries-read']
  if had == read then
    return {0, last}
  end
  redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], last, 'ENTRIESREAD', read)
  return {0, last, had or -1, read}
end
local stream = to_table(redis.call('XINFO', 'STREAM', KEYS[1]))
local already_read = stream['entries-added']
if ARGV[2] ~= '$' then
  already_read = already_read - stream['length']
end
redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], ARGV[2], 'ENTRIESREAD', already_read)
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'entries_before_start', already_read)
return {1}
