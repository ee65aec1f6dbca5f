-- Apply one pre-aggregated batch of the aggregates group, atomically and at most once.
--
-- First checks that every entry of the batch is still pending and owned by this consumer; if
-- not (another consumer claimed it, or this very script already ran and acknowledged it before
-- a client re-send), it changes nothing and returns 0. Then checks that no reading's
-- (sensor_id, seq) was counted before; if some were, it changes nothing and returns
-- {-1, {their 0-based positions in the seq list}}: the caller drops them as duplicates and
-- sends the batch again. Only then merges the bucket deltas, records the seqs, updates the
-- sensor index and the ledger, and XACKs the entries. Returns 1.
--
-- KEYS: 1 stream, 2 ledger hash, 3 seq-high hash, 4 sensors zset, 5 sensor index hash,
-- 6 sensor names list, then keys referred to by index from ARGV (seq windows, metric sets,
-- aggregate chunks, fleet buckets).
-- ARGV: group, consumer, min id, max id, n ids, ids (comma-separated),
--       n ledger increments, (field, amount)...,
--       n sensors with seqs, (window key index, sensor, seqs ascending, comma-separated)...,
--       n sensors, (newest ts, sensor)..., n metric adds, (metric set key index, metric)...,
--       n deltas, then packed, sorted by chunk key, fleet bucket key and sensor: for each, its
--       chunk key index, fleet bucket key index and sensor (its place in the sensors section,
--       from 0) as three int32; hash fields
--       `sensor|bucket` (comma-separated); records (summary of 72 bytes, then histogram),
--       end to end; record offsets (n + 1 int32),
--       n expiring keys, (key index, expire-at ms)...

local SEQ_WINDOW = 4096
local stream, ledger, seq_high, sensors = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local sensor_index, sensor_names = KEYS[5], KEYS[6]
local group, consumer = ARGV[1], ARGV[2]
local pos = 5

local function take()
  pos = pos + 1
  return ARGV[pos]
end

-- 1. Ownership.
local n_ids = tonumber(ARGV[5])
local ids = {}
for id in string.gmatch(take(), '[^,]+') do
  ids[#ids + 1] = id
end
if #ids ~= n_ids then
  return redis.error_reply('apply_batch: ' .. #ids .. ' entry IDs where ' .. n_ids .. ' were announced')
end
local limit = n_ids * 2 + 100
local pending = redis.call('XPENDING', stream, group, ARGV[3], ARGV[4], limit, consumer)
local owned = {}
for _, entry in ipairs(pending) do
  owned[entry[1]] = true
end
for i = 1, n_ids do
  if not owned[ids[i]] then
    if #pending < limit then
      return 0
    end
    if #redis.call('XPENDING', stream, group, ids[i], ids[i], 1, consumer) == 0 then
      return 0
    end
  end
end

-- 2. Read the rest of the arguments.
local increments = {}
for i = 1, tonumber(take()) do
  increments[i] = {take(), tonumber(take())}
end
-- Readings with a seq, by sensor; positions number them across sensors, from 0, as sent.
local sensor_order, by_sensor = {}, {}
local n_seqs = 0
for _ = 1, tonumber(take()) do
  local window, sensor = KEYS[tonumber(take())], take()
  local items = {}
  for seq in string.gmatch(take(), '[^,]+') do
    items[#items + 1] = {n_seqs, tonumber(seq)}
    n_seqs = n_seqs + 1
  end
  by_sensor[sensor] = {window = window, items = items}
  sensor_order[#sensor_order + 1] = sensor
end

-- Redis's Lua takes at most ~8000 values from unpack(); call in slices.
local function call_in_slices(command, key, values, per_call)
  local out = {}
  for first = 1, #values, per_call do
    local got = redis.call(command, key, unpack(values, first, math.min(first + per_call - 1, #values)))
    if type(got) == 'table' then
      for _, v in ipairs(got) do out[#out + 1] = v end
    end
  end
  return out
end

-- 3. No (sensor, seq) of the batch may have been counted already. Each sensor's window is
-- read and written with one BITFIELD.
local highs = {}
local got = call_in_slices('HMGET', seq_high, sensor_order, 1000)
for i, sensor in ipairs(sensor_order) do
  highs[sensor] = got[i] and tonumber(got[i]) or nil
end
local already = {}
for _, sensor in ipairs(sensor_order) do
  local group, high = by_sensor[sensor], highs[sensor]
  if high then
    local ops, positions = {}, {}
    for _, item in ipairs(group.items) do
      local seq = item[2]
      if seq <= high and seq > high - SEQ_WINDOW then
        ops[#ops + 1] = 'GET'
        ops[#ops + 1] = 'u1'
        ops[#ops + 1] = seq % SEQ_WINDOW
        positions[#positions + 1] = item[1]
      end
    end
    if #ops > 0 then
      for j, bit in ipairs(call_in_slices('BITFIELD', group.window, ops, 3000)) do
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
for _, sensor in ipairs(sensor_order) do
  local group, high = by_sensor[sensor], highs[sensor]
  local ops = {}
  -- The run of ones being built: seqs run_first..run_last, each recorded.
  local run_first, run_last
  local function flush()
    if run_first then
      add_run(ops, run_first, run_last, 1)
      run_first = nil
    end
  end
  local function record(seq)
    if run_first and seq == run_last + 1 then
      run_last = seq
    else
      flush()
      run_first, run_last = seq, seq
    end
  end
  for _, item in ipairs(group.items) do
    local seq = item[2]
    if not high then
      high = seq
      record(seq)
    elseif seq > high then
      gaps = gaps + (seq - high - 1)
      if seq - high >= SEQ_WINDOW then
        redis.call('DEL', group.window)
        ops, run_first = {}, nil
      elseif seq > high + 1 then
        flush()
        add_run(ops, high + 1, seq - 1, 0)
      end
      high = seq
      record(seq)
    elseif seq > high - SEQ_WINDOW then
      filled = filled + 1
      record(seq)
    else
      beyond = beyond + 1
    end
  end
  flush()
  if #ops > 0 then
    call_in_slices('BITFIELD', group.window, ops, 4000)
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
for i, name in ipairs(names) do
  if numbers[i] then
    numbers[i] = tonumber(numbers[i])
  else
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
  redis.call('SADD', KEYS[tonumber(take())], take())
end

-- 6. Merge the bucket deltas, and expire every chunk key with its tier.
local SUMMARY, SUMMARY_BYTES = '<ddddddddd', 72
-- The stored summary `old` merged with the one at byte `at` (from 1) of `packed`.
local function merge_summary(old, packed, at)
  local c1, s1, q1, lo1, hi1, fts1, fv1, lts1, lv1 = struct.unpack(SUMMARY, old)
  local c2, s2, q2, lo2, hi2, fts2, fv2, lts2, lv2 = struct.unpack(SUMMARY, packed, at)
  if fts2 < fts1 or (fts2 == fts1 and fv2 < fv1) then
    fts1, fv1 = fts2, fv2
  end
  if lts2 > lts1 or (lts2 == lts1 and lv2 > lv1) then
    lts1, lv1 = lts2, lv2
  end
  return struct.pack(SUMMARY, c1 + c2, s1 + s2, q1 + q2, math.min(lo1, lo2), math.max(hi1, hi2),
    fts1, fv1, lts1, lv1)
end

-- Histograms: (int32 key, uint32 count) pairs. Unpacked and packed with one struct call each,
-- since a stored histogram can hold hundreds of bins.
local function merge_bins(old, new)
  local counts, order = {}, {}
  for _, packed in ipairs({old, new}) do
    local n = #packed / 8
    if n > 0 then
      local values = {struct.unpack('<' .. string.rep('i4I4', n, ''), packed)}
      for i = 1, 2 * n, 2 do
        local key, count = values[i], values[i + 1]
        if counts[key] then
          counts[key] = counts[key] + count
        else
          counts[key] = count
          order[#order + 1] = key
        end
      end
    end
  end
  local flat = {}
  for i, key in ipairs(order) do
    flat[2 * i - 1] = key
    flat[2 * i] = counts[key]
  end
  return struct.pack('<' .. string.rep('i4I4', #order, ''), unpack(flat))
end

-- A histogram may list a bin more than once (readers add them up): new bins are appended, and
-- merged into one entry per bin only when the histogram grows past a limit. Merging on every
-- update would cost most of the script's time for the coarse tiers' wide histograms.
local COMPACT_BYTES = 2048

-- Little-endian int32s packed end to end, unpacked a slice at a time (see call_in_slices).
local function unpack_int32s(packed, count)
  local out = {}
  for first = 0, count - 1, 4000 do
    local n = math.min(4000, count - first)
    local values = {struct.unpack('<' .. string.rep('i4', n), packed, first * 4 + 1)}
    for j = 1, n do
      out[first + j] = values[j]
    end
  end
  return out
end

local n_deltas = tonumber(take())
local placement = unpack_int32s(take(), 3 * n_deltas)
local fields = {}
for field in string.gmatch(take(), '[^,]+') do
  fields[#fields + 1] = field
end
local records, offsets = take(), unpack_int32s(take(), n_deltas + 1)
if #fields ~= n_deltas then
  return redis.error_reply('apply_batch: ' .. #fields .. ' bucket fields for ' .. n_deltas .. ' deltas')
end

-- Deltas arrive sorted by chunk hash, then fleet bucket, then sensor. Each hash is read with
-- one HMGET and written with one HSET. Neighbouring sensors' summaries in one fleet bucket
-- (a batch mostly holds sensors numbered one after another) are written with one SETRANGE,
-- since a command per delta would cost more than the merge itself.
local run_key, run_from, run_next, run = nil, 0, 0, {}
local function write_run()
  if run_key then
    redis.call('SETRANGE', run_key, run_from * SUMMARY_BYTES, table.concat(run))
  end
end
local function add_to_run(key, number, summary)
  if key == run_key and number == run_next then
    run[#run + 1] = summary
  else
    write_run()
    run_key, run_from, run = key, number, {summary}
  end
  run_next = number + 1
end

local first = 1
while first <= n_deltas do
  local index = placement[3 * first - 2]
  local last = first
  while last < n_deltas and placement[3 * last + 1] == index do
    last = last + 1
  end
  local key, wanted = KEYS[index], {}
  for j = first, last do
    wanted[#wanted + 1] = fields[j]
  end
  local old = call_in_slices('HMGET', key, wanted, 7000)
  local values = {}
  for j = first, last do
    local from, to = offsets[j] + 1, offsets[j + 1]
    local stored, record, summary = old[j - first + 1], nil, nil
    if stored then
      summary = merge_summary(stored, records, from)
      local new_bins = string.sub(records, from + SUMMARY_BYTES, to)
      if #stored - SUMMARY_BYTES + #new_bins <= COMPACT_BYTES then
        record = summary .. string.sub(stored, SUMMARY_BYTES + 1) .. new_bins
      else
        record = summary .. merge_bins(string.sub(stored, SUMMARY_BYTES + 1), new_bins)
      end
    else
      record = string.sub(records, from, to)
      summary = string.sub(record, 1, SUMMARY_BYTES)
    end
    add_to_run(KEYS[placement[3 * j - 1]], numbers[placement[3 * j] + 1], summary)
    values[#values + 1] = fields[j]
    values[#values + 1] = record
  end
  call_in_slices('HSET', key, values, 7000)
  first = last + 1
end
write_run()

for _ = 1, tonumber(take()) do
  redis.call('PEXPIREAT', KEYS[tonumber(take())], take())
end

-- 7. The ledger, then the acknowledgement.
for _, inc in ipairs(increments) do
  if inc[2] ~= 0 then
    redis.call('HINCRBY', ledger, inc[1], inc[2])
  end
end
if gaps > 0 then redis.call('HINCRBY', ledger, 'seq_gaps', gaps) end
if filled > 0 then redis.call('HINCRBY', ledger, 'seq_gaps_filled', filled) end
if beyond > 0 then redis.call('HINCRBY', ledger, 'seq_beyond_window', beyond) end
for first = 1, n_ids, 1000 do
  redis.call('XACK', stream, group, unpack(ids, first, math.min(first + 999, n_ids)))
end
return 1
