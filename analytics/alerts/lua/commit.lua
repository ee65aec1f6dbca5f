-- Settle one evaluated batch of the alerts group: state, alert changes and XACK, all or nothing.
--
-- The settlement's gate is 'in_order' (see ingest/lua/settle.lua): batches settle in stream
-- order whatever the number of workers, so the alerts are the ones a single worker would give.
-- Then the state version, which every settled batch increments, must still be the one the
-- batch was evaluated against. Returns -1 (changing nothing) while an older entry is still
-- unsettled, 0 when the batch is no longer this consumer's (claimed by another, or this very
-- script already ran before a client re-send), -2 when another batch was settled since the
-- state was read, 1 when settled; and the state version.
--
-- Lists travel packed in one argument each (sensor ids comma-separated; rule states as fixed-size
-- binary records, concatenated): packing thousands of small arguments costs the client more than
-- everything else.
--
-- KEYS: the settlement's (settle.lua), then 4 alerts stream, 5 open-alerts hash, 6 clock hash,
-- 7 state version, 8 state hash, then keys referred to by index from ARGV (silence rules'
-- heard sets).
-- ARGV: the settlement's, then alerts maxlen, state version evaluated against,
--       n clocks, sensors, `ts:seq`s,
--       n groups of sensors' state values, (value size, n, sensors, values)...,
--       n changes, (open field, state, raise record JSON, n fields, (field, value)...)...,
--       n silence rules, (heard key index, rule, after ms, n fields, (field, value)..., n,
--         sensors, heard ms, event ts, entry ids)...: the sensors spoke; an open silence alert
--         of theirs is resolved with the rule's fields and theirs. A heard ms written `=ms`
--         says the sensor went offline then (a reading with online = 0): it is made silent for
--         the rule's `after` already, so the next sweep raises its alert.

local settlement = read_settlement()
local alerts, open, clock, version, state = KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local maxlen, expected_version = ARGV[settlement.next_arg], tonumber(ARGV[settlement.next_arg + 1])
local pos = settlement.next_arg + 1
local CHUNK = 1000

local function take()
  pos = pos + 1
  return ARGV[pos]
end

local function take_list(n, sep)
  local text = take()
  local out = {}
  if n == 0 then
    return out
  end
  for part in string.gmatch(text .. sep, '([^' .. sep .. ']*)' .. sep) do
    out[#out + 1] = part
  end
  return out
end

local function take_fields()
  local fields = {}
  for i = 1, tonumber(take()) * 2 do
    fields[i] = take()
  end
  return fields
end

-- The values in slices small enough to unpack: unpack has a limit.
local function slices(values)
  local first = 1 - CHUNK
  return function()
    first = first + CHUNK
    if first > #values then
      return nil
    end
    return {unpack(values, first, math.min(first + CHUNK - 1, #values))}
  end
end

-- HSET/ZADD/XACK with many arguments, a slice at a time.
local function call_sliced(command, key, extra, values)
  for slice in slices(values) do
    if extra then
      redis.call(command, key, extra, unpack(slice))
    else
      redis.call(command, key, unpack(slice))
    end
  end
end

local now = redis.call('TIME')
local detected_ms = tostring(now[1] * 1000 + math.floor(now[2] / 1000))

local function add_change(fields)
  fields[#fields + 1] = 'detected_ms'
  fields[#fields + 1] = detected_ms
  return redis.call('XADD', alerts, 'MAXLEN', '~', maxlen, '*', unpack(fields))
end

-- 1. The gate.
local gate = settle_gate(settlement)
if gate ~= 1 then
  return {gate, 0}
end
local current_version = tonumber(redis.call('GET', version) or '0')
if current_version ~= expected_version then
  return {-2, current_version}
end

-- 2. Effects.
local n_clocks = tonumber(take())
local sensors, times = take_list(n_clocks, ','), take_list(n_clocks, ',')
local pairs_ = {}
for i = 1, n_clocks do
  pairs_[#pairs_ + 1] = sensors[i]
  pairs_[#pairs_ + 1] = times[i]
end
call_sliced('HSET', clock, nil, pairs_)
for _ = 1, tonumber(take()) do
  local size, n = tonumber(take()), tonumber(take())
  local names = take_list(n, ',')
  local values = take()
  local set = {}
  for i = 1, n do
    set[#set + 1] = names[i]
    set[#set + 1] = string.sub(values, (i - 1) * size + 1, i * size)
  end
  call_sliced('HSET', state, nil, set)
end
for _ = 1, tonumber(take()) do
  local field, state, record = take(), take(), take()
  local id = add_change(take_fields())
  if state == 'raised' then
    -- The open record names its alerts stream entry: a JSON object from Python, closed by `}`.
    redis.call('HSET', open, field, string.sub(record, 1, -2) .. ', "id": "' .. id .. '"}')
  else
    redis.call('HDEL', open, field)
  end
end
for _ = 1, tonumber(take()) do
  local heard, rule, after_ms = KEYS[tonumber(take())], take(), tonumber(take())
  local template = take_fields()
  local n = tonumber(take())
  local names, heard_ms = take_list(n, ','), take_list(n, ',')
  local ts, entry_ids = take_list(n, ','), take_list(n, ',')
  local scored, offline = {}, {}
  for i = 1, n do
    local went = string.match(heard_ms[i], '^=(%d+)$')
    if went then
      offline[i] = tonumber(went) - after_ms - 1
    else
      scored[#scored + 1] = heard_ms[i]
      scored[#scored + 1] = names[i]
    end
  end
  -- A sensor still in the heard set has no silence alert open: raising one takes it out. Only
  -- the others (silenced, or heard for the first time) are looked up.
  local absent = {}
  for slice in slices(names) do
    for _, score in ipairs(redis.call('ZMSCORE', heard, unpack(slice))) do
      absent[#absent + 1] = not score
    end
  end
  call_sliced('ZADD', heard, 'GT', scored)
  for i = 1, n do
    local field = absent[i] and names[i] .. '|' .. rule
    local raised = field and redis.call('HGET', open, field)
    if offline[i] then
      -- Silent for `after` already, unless its silence alert is open.
      if not raised then
        redis.call('ZADD', heard, offline[i], names[i])
      end
    elseif raised then
      local fields = {}
      for j = 1, #template do
        fields[j] = template[j]
      end
      for _, pair in ipairs({{'sensor_id', names[i]}, {'state', 'resolved'}, {'ts', ts[i]},
                             {'reading', entry_ids[i]},
                             {'raised_ts', tostring(cjson.decode(raised)['ts'])}}) do
        fields[#fields + 1] = pair[1]
        fields[#fields + 1] = pair[2]
      end
      add_change(fields)
      redis.call('HDEL', open, field)
    end
  end
end
settle_finish(settlement)
return {1, redis.call('INCR', version)}
