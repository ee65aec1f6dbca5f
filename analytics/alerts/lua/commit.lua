-- Settle one evaluated batch of the alerts group: state, alert changes and XACK, all or nothing.
--
-- The gate: every pending entry of the group up to the batch's last ID must be one of the batch's
-- entries, owned by this consumer. So batches settle in stream order whatever the number of
-- workers, and the alerts are the ones a single worker would give. Returns -1 (changing nothing)
-- while an older entry is still unsettled, 0 when the batch is no longer this consumer's (claimed
-- by another, or this very script already ran before a client re-send), 1 when settled.
--
-- KEYS: 1 stream, 2 group ledger, 3 alerts stream, 4 open-alerts hash, 5 clock hash, then keys
-- referred to by index from ARGV (rule state hashes, silence rules' heard sets).
-- ARGV: group, consumer, last id, alerts maxlen, n ids, ids...,
--       n ledger increments, (field, amount)...,
--       n clock updates, (sensor, ts:seq)...,
--       n state updates, (key index, sensor, encoded state or '' to delete)...,
--       n changes, (open field, state, raise record JSON, n fields, (field, value)...)...,
--       n heard, (key index, sensor, heard ms, open field, n fields, (field, value)...)...
--         for silence rules: the sensor spoke; if its silence alert is open, resolve it with
--         these fields plus raised_ts from the open alert.

local stream, ledger, alerts, open, clock = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, consumer, last_id, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local pos = 4

local function take()
  pos = pos + 1
  return ARGV[pos]
end

local function take_fields()
  local fields = {}
  for i = 1, tonumber(take()) * 2 do
    fields[i] = take()
  end
  return fields
end

local now = redis.call('TIME')
local detected_ms = tostring(now[1] * 1000 + math.floor(now[2] / 1000))

local function add_change(fields)
  fields[#fields + 1] = 'detected_ms'
  fields[#fields + 1] = detected_ms
  redis.call('XADD', alerts, 'MAXLEN', '~', maxlen, '*', unpack(fields))
end

-- 1. The gate.
local n_ids = tonumber(take())
local ours = {}
local ids = {}
for i = 1, n_ids do
  ids[i] = take()
  ours[ids[i]] = true
end
local pending = redis.call('XPENDING', stream, group, '-', last_id, n_ids + 1)
for _, entry in ipairs(pending) do
  if not ours[entry[1]] then
    return -1
  end
  if entry[2] ~= consumer then
    return 0
  end
end
if #pending ~= n_ids then
  return 0
end

-- 2. Effects.
for _ = 1, tonumber(take()) do
  redis.call('HINCRBY', ledger, take(), take())
end
for _ = 1, tonumber(take()) do
  redis.call('HSET', clock, take(), take())
end
for _ = 1, tonumber(take()) do
  local key, sensor, state = KEYS[tonumber(take())], take(), take()
  if state == '' then
    redis.call('HDEL', key, sensor)
  else
    redis.call('HSET', key, sensor, state)
  end
end
for _ = 1, tonumber(take()) do
  local field, state, record = take(), take(), take()
  add_change(take_fields())
  if state == 'raised' then
    redis.call('HSET', open, field, record)
  else
    redis.call('HDEL', open, field)
  end
end
for _ = 1, tonumber(take()) do
  local key, sensor, heard_ms, field = KEYS[tonumber(take())], take(), take(), take()
  local fields = take_fields()
  redis.call('ZADD', key, 'GT', heard_ms, sensor)
  local raised = redis.call('HGET', open, field)
  if raised then
    fields[#fields + 1] = 'raised_ts'
    fields[#fields + 1] = tostring(cjson.decode(raised)['ts'])
    add_change(fields)
    redis.call('HDEL', open, field)
  end
end
-- In slices: unpack has a limit on how many values it spreads.
for first = 1, n_ids, 1000 do
  redis.call('XACK', stream, group, unpack(ids, first, math.min(first + 999, n_ids)))
end
return 1
