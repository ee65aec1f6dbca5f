-- Apply one pre-aggregated batch of the aggregates group, atomically and at most once.
--
-- First the settlement's gate ('owned', see ingest/lua/settle.lua): if the batch is no longer
-- this consumer's, it changes nothing and returns 0. Then checks that no reading's
-- (sensor_id, seq) was counted before; if some were, it changes nothing and returns
-- {-1, {their 0-based positions in the seq list}}: the caller drops them as duplicates and
-- sends the batch again. Only then merges the bucket deltas, records the seqs, updates the
-- sensor index, and settles (ledger and XACK). Returns 1.
--
-- Coarse tiers are rolled up from the finest one (rollup.lua) behind a mark: fine bucket B of
-- sensor number N is rolled up when B < mark.bucket, or B < mark.until and N < mark.sensor.
-- A delta for a fine bucket not yet rolled up is merged into the fine tier only; the roll-up
-- carries it on. A delta for one already rolled up (a late reading) is merged into the coarse
-- tiers as well, here. Readings older than the fine tier's retention come as coarse deltas of
-- their own. The first batch ever sets the mark at its oldest fine bucket.
--
-- A chunk already packed (analytics/compaction.py) gets a delta as a record beside the blobs,
-- and its hash goes on the loose set to be packed again; its fleet buckets are gone.
--
-- KEYS: the settlement's (settle.lua), then 4 seq-high hash, 5 sensors zset, 6 sensor index
-- hash, 7 sensor names list, 8 roll-up mark hash, 9 metric names set, 10 packed-until hash,
-- 11 loose chunks set, then keys referred to by index from ARGV (seq windows, metric sets,
-- aggregate chunks, fleet buckets).
-- ARGV: the settlement's, then
--       n sensors with seqs, (window key index, sensor, how many seqs)..., the seqs as
--       little-endian doubles, each sensor's ascending, in the order of the sensors,
--       n sensors, (newest ts, sensor)..., n metric adds, (metric set key index, metric)...,
--       n chunk keys, (key index, tier, chunk end ms)..., n deltas, n coarse tiers C, the fine tier's bucket ms, each coarse tier's bucket ms,
--       then packed, sorted by chunk key, fleet bucket key and sensor: for each delta 4 + 2C
--       int32: its chunk key index, fleet bucket key index, sensor (its place in the sensors
--       section, from 0), its fine bucket in bucket numbers (ms / fine bucket ms; -1 for a
--       coarse delta), then for each coarse tier the chunk and fleet bucket key indexes its
--       fine bucket rolls up into; hash fields
--       `sensor|bucket` (comma-separated); records (summary, then histogram),
--       end to end; record offsets (n + 1 int32),
--       n expiring keys, (key index, expire-at ms)...

local SEQ_WINDOW = 4096
local settlement = read_settlement()
local ledger = settlement.ledger
local seq_high, sensors, sensor_index, sensor_names = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local rollup, metric_names, packed_until, loose_chunks = KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local pos = settlement.next_arg - 1

local function take()
  pos = pos + 1
  return ARGV[pos]
end

-- 1. Ownership.
if settle_gate(settlement) ~= 1 then
  return 0
end

-- 2. Read the rest of the arguments.
-- Readings with a seq, by sensor: sensor i's are seqs[firsts[i]..lasts[i]], ascending. A
-- reading's position in the seq list (from 0) is its index in seqs less one.
local windows, sensor_order, firsts, lasts = {}, {}, {}, {}
local n_seqs = 0
for i = 1, tonumber(take()) do
  windows[i], sensor_order[i] = KEYS[tonumber(take())], take()
  firsts[i] = n_seqs + 1
  n_seqs = n_seqs + tonumber(take())
  lasts[i] = n_seqs
end
local seqs = unpack_values('d', 8, take(), n_seqs)

-- 3. No (sensor, seq) of the batch may have been counted already. Each sensor's window is
-- read and written with one BITFIELD.
local highs = {}
local got = call_in_slices('HMGET', seq_high, sensor_order, 1000)
for i = 1, #sensor_order do
  highs[i] = got[i] and tonumber(got[i]) or nil
end
local already = {}
for i = 1, #sensor_order do
  local high = highs[i]
  if high then
    local ops, positions = {}, {}
    for k = firsts[i], lasts[i] do
      local seq = seqs[k]
      if seq <= high and seq > high - SEQ_WINDOW then
        ops[#ops + 1] = 'GET'
        ops[#ops + 1] = 'u1'
        ops[#ops + 1] = seq % SEQ_WINDOW
        positions[#positions + 1] = k - 1
      end
    end
    if #ops > 0 then
      for j, bit in ipairs(call_in_slices('BITFIELD', windows[i], ops, 3000)) do
        if bit == 1 then
          already[#already + 1] = positions[j]
        end
      end
    end
  end
end
if #already > 0 then
  return {-1, already}
end

-- 4. Record the seqs: gaps when a sensor skips ahead, filled gaps when a late one arrives.
-- Bits are written in runs, one BITFIELD op for up to 64 neighbouring bits of the same value
-- (a signed field of -1 is all ones): a sensor's seqs mostly arrive in order, so a batch adds
-- about one run per sensor.
local RUN_BITS = 64
local function add_run(ops, first, last, bit)
  while first <= last do
    local at = first % SEQ_WINDOW
    local width = math.min(last - first + 1, RUN_BITS, SEQ_WINDOW - at)
    ops[#ops + 1] = 'SET'
    ops[#ops + 1] = 'i' .. width
    ops[#ops + 1] = at
    ops[#ops + 1] = bit == 1 and -1 or 0
    first = first + width
  end
end
local gaps, filled, beyond = 0, 0, 0
local new_highs = {}
for i, sensor in ipairs(sensor_order) do
  local high, window = highs[i], windows[i]
  local ops = {}
  -- The run of ones being built: seqs run_first..run_last, each recorded. A sensor's seqs
  -- come ascending, so a run is seqs that follow one another.
  local run_first, run_last
  for k = firsts[i], lasts[i] do
    local seq = seqs[k]
    local recorded = true
    if not high then
      high = seq
    elseif seq > high then
      gaps = gaps + (seq - high - 1)
      if seq - high >= SEQ_WINDOW then
        redis.call('DEL', window)
        ops, run_first = {}, nil
      elseif seq > high + 1 then
        if run_first then
          add_run(ops, run_first, run_last, 1)
          run_first = nil
        end
        add_run(ops, high + 1, seq - 1, 0)
      end
      high = seq
    elseif seq > high - SEQ_WINDOW then
      filled = filled + 1
    else
      beyond = beyond + 1
      recorded = false
    end
    if recorded then
      if run_first and seq == run_last + 1 then
        run_last = seq
      else
        if run_first then
          add_run(ops, run_first, run_last, 1)
        end
        run_first, run_last = seq, seq
      end
    end
  end
  if run_first then
    add_run(ops, run_first, run_last, 1)
  end
  if #ops > 0 then
    call_in_slices('BITFIELD', window, ops, 4000)
  end
  new_highs[#new_highs + 1] = sensor
  new_highs[#new_highs + 1] = string.format('%.0f', high)
end
if #new_highs > 0 then
  call_in_slices('HSET', seq_high, new_highs, 2000)
end

-- 5. Sensor index: newest event time per sensor, each sensor's number (given to sensors met
-- for the first time), and each sensor's metric names.
local newest, names = {'GT'}, {}
for i = 1, tonumber(take()) do
  newest[#newest + 1] = take()
  names[i] = take()
  newest[#newest + 1] = names[i]
end
local numbers = call_in_slices('HMGET', sensor_index, names, 4000)
local new_sensors = 0
for i, name in ipairs(names) do
  if numbers[i] then
    numbers[i] = tonumber(numbers[i])
  else
    new_sensors = new_sensors + 1
    numbers[i] = redis.call('RPUSH', sensor_names, name) - 1
    redis.call('HSET', sensor_index, name, numbers[i])
  end
end
if #newest > 1 then
  for first = 2, #newest, 2000 do
    redis.call('ZADD', sensors, 'GT', unpack(newest, first, math.min(first + 1999, #newest)))
  end
end
for _ = 1, tonumber(take()) do
  local set, metric = KEYS[tonumber(take())], take()
  redis.call('SADD', set, metric)
  redis.call('SADD', metric_names, metric)
end

-- 6. Merge the bucket deltas, and expire every chunk key with its tier.
local packed_ends = {}
local marks = redis.call('HGETALL', packed_until)
for i = 1, #marks, 2 do
  packed_ends[marks[i]] = tonumber(marks[i + 1])
end
-- Chunk key index -> true for the chunks already packed.
local packed = {}
for _ = 1, tonumber(take()) do
  local index, tier, chunk_end = tonumber(take()), take(), tonumber(take())
  packed[index] = packed_ends[tier] ~= nil and chunk_end <= packed_ends[tier]
end
local n_deltas, n_coarse, fine_ms = tonumber(take()), tonumber(take()), tonumber(take())
local coarse_ms = {}
for c = 1, n_coarse do
  coarse_ms[c] = tonumber(take())
end
local width = 4 + 2 * n_coarse
local placement = unpack_values('i4', 4, take(), width * n_deltas)
local fields = {}
for field in string.gmatch(take(), '[^,]+') do
  fields[#fields + 1] = field
end
local records, offsets = take(), unpack_values('i4', 4, take(), n_deltas + 1)
if #fields ~= n_deltas then
  return redis.error_reply('apply_batch: ' .. #fields .. ' bucket fields for ' .. n_deltas .. ' deltas')
end

local mark = redis.call('HMGET', rollup, 'bucket', 'sensor', 'until')
local mark_bucket, mark_sensor, mark_until = tonumber(mark[1]), tonumber(mark[2]), tonumber(mark[3])
if not mark_bucket and n_deltas > 0 and n_coarse > 0 then
  if redis.call('LLEN', sensor_names) > new_sensors then
    -- Aggregates written before there was a roll-up hold every tier in full: roll up only
    -- from the next fine bucket on.
    local now = redis.call('TIME')
    local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
    mark_bucket = now_ms - now_ms % fine_ms + fine_ms
  else
    for j = 1, n_deltas do
      local at = placement[width * (j - 1) + 4]
      if at >= 0 and (not mark_bucket or at * fine_ms < mark_bucket) then
        mark_bucket = at * fine_ms
      end
    end
  end
  if mark_bucket then
    mark_sensor, mark_until = 0, mark_bucket
    local text = string.format('%.0f', mark_bucket)
    redis.call('HSET', rollup, 'bucket', text, 'sensor', 0, 'until', text)
  end
end

-- Deltas arrive sorted by chunk hash, then fleet bucket, then sensor. Each hash is read with
-- one HMGET and written with one HSET.
local fleet = fleet_writer()
-- Coarse chunk key index -> items for merge_items, for deltas already rolled up.
local late, late_keys = {}, {}
local function roll_on(j, bucket, number)
  local base = width * (j - 1)
  local sensor = names[placement[base + 3] + 1]
  for c = 1, n_coarse do
    local key = placement[base + 3 + 2 * c]
    if not late[key] then
      late[key] = {}
      late_keys[#late_keys + 1] = key
    end
    local items = late[key]
    items[#items + 1] = {sensor .. '|' .. string.format('%.0f', bucket - bucket % coarse_ms[c]),
      records, offsets[j] + 1, offsets[j + 1], KEYS[placement[base + 4 + 2 * c]], number}
  end
end

local first = 1
while first <= n_deltas do
  local index = placement[width * (first - 1) + 1]
  local last = first
  while last < n_deltas and placement[width * last + 1] == index do
    last = last + 1
  end
  local key, wanted = KEYS[index], {}
  if packed[index] then
    redis.call('SADD', loose_chunks, key)
  end
  for j = first, last do
    wanted[#wanted + 1] = fields[j]
  end
  local old = call_in_slices('HMGET', key, wanted, 7000)
  local values = {}
  for j = first, last do
    local base = width * (j - 1)
    local record, summary = merged_record(old[j - first + 1], records, offsets[j] + 1, offsets[j + 1])
    local number = numbers[placement[base + 3] + 1]
    if not packed[index] then
      fleet.add(KEYS[placement[base + 2]], number, summary)
    end
    values[#values + 1] = fields[j]
    values[#values + 1] = record
    local at = placement[base + 4]
    if at >= 0 and mark_bucket then
      local bucket = at * fine_ms
      if bucket < mark_bucket or (bucket < mark_until and number < mark_sensor) then
        roll_on(j, bucket, number)
      end
    end
  end
  call_in_slices('HSET', key, values, 7000)
  first = last + 1
end
fleet.flush()
for _, key in ipairs(late_keys) do
  if packed[key] then
    redis.call('SADD', loose_chunks, KEYS[key])
  end
  merge_items(KEYS[key], late[key], fleet, false, packed[key])
end
fleet.flush()

for _ = 1, tonumber(take()) do
  redis.call('PEXPIREAT', KEYS[tonumber(take())], take())
end

-- 7. The ledger, then the acknowledgement.
if gaps > 0 then redis.call('HINCRBY', ledger, 'seq_gaps', gaps) end
if filled > 0 then redis.call('HINCRBY', ledger, 'seq_gaps_filled', filled) end
if beyond > 0 then redis.call('HINCRBY', ledger, 'seq_beyond_window', beyond) end
settle_finish(settlement)
return 1
