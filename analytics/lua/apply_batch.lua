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
-- KEYS: 1 stream, 2 ledger hash, 3 seq-high hash, 4 sensors zset, then keys referred to by
-- index from ARGV (seq windows, metric sets, aggregate chunks).
-- ARGV: group, consumer, min id, max id, n ids, ids...,
--       n ledger increments, (field, amount)...,
--       n seqs, (window key index, sensor, seq)... sorted by sensor then seq,
--       n sensors, (sensor, last ts)..., n metric adds, (metric set key index, metric)...,
--       n deltas, (chunk key index, bucket field, summary, histogram, expire-at ms)...

local SEQ_WINDOW = 4096
local stream, ledger, seq_high, sensors = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer = ARGV[1], ARGV[2]
local pos = 5

local function take()
  pos = pos + 1
  return ARGV[pos]
end

-- 1. Ownership.
local n_ids = tonumber(ARGV[5])
local ids = {}
for i = 1, n_ids do
  ids[i] = take()
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
local seqs = {}
for i = 1, tonumber(take()) do
  seqs[i] = {KEYS[tonumber(take())], take(), tonumber(take())}
end

-- 3. No (sensor, seq) of the batch may have been counted already.
local function seen(window, sensor, seq)
  local high = redis.call('HGET', seq_high, sensor)
  if not high then
    return false
  end
  high = tonumber(high)
  if seq > high or seq <= high - SEQ_WINDOW then
    return false
  end
  return redis.call('GETBIT', window, seq % SEQ_WINDOW) == 1
end
local already = {}
for i, s in ipairs(seqs) do
  if seen(s[1], s[2], s[3]) then
    already[#already + 1] = i - 1
  end
end
if #already > 0 then
  return {-1, already}
end

-- 4. Record the seqs: gaps when a sensor skips ahead, filled gaps when a late one arrives.
local gaps, filled, beyond = 0, 0, 0
for _, s in ipairs(seqs) do
  local window, sensor, seq = s[1], s[2], s[3]
  local high = redis.call('HGET', seq_high, sensor)
  if not high then
    redis.call('SETBIT', window, seq % SEQ_WINDOW, 1)
    redis.call('HSET', seq_high, sensor, seq)
  else
    high = tonumber(high)
    if seq > high then
      gaps = gaps + (seq - high - 1)
      if seq - high >= SEQ_WINDOW then
        redis.call('DEL', window)
      else
        for skipped = high + 1, seq - 1 do
          redis.call('SETBIT', window, skipped % SEQ_WINDOW, 0)
        end
      end
      redis.call('SETBIT', window, seq % SEQ_WINDOW, 1)
      redis.call('HSET', seq_high, sensor, seq)
    elseif seq > high - SEQ_WINDOW then
      redis.call('SETBIT', window, seq % SEQ_WINDOW, 1)
      filled = filled + 1
    else
      beyond = beyond + 1
    end
  end
end

-- 5. Sensor index.
for _ = 1, tonumber(take()) do
  redis.call('ZADD', sensors, 'GT', tonumber(take()), take())
end
for _ = 1, tonumber(take()) do
  redis.call('SADD', KEYS[tonumber(take())], take())
end

-- 6. Merge the bucket deltas.
local SUMMARY = '<ddddddddd'
local function merge_summary(old, new)
  local c1, s1, q1, lo1, hi1, fts1, fv1, lts1, lv1 = struct.unpack(SUMMARY, old)
  local c2, s2, q2, lo2, hi2, fts2, fv2, lts2, lv2 = struct.unpack(SUMMARY, new)
  if fts2 < fts1 or (fts2 == fts1 and fv2 < fv1) then
    fts1, fv1 = fts2, fv2
  end
  if lts2 > lts1 or (lts2 == lts1 and lv2 > lv1) then
    lts1, lv1 = lts2, lv2
  end
  return struct.pack(SUMMARY, c1 + c2, s1 + s2, q1 + q2, math.min(lo1, lo2), math.max(hi1, hi2),
    fts1, fv1, lts1, lv1)
end

local function merge_bins(old, new)
  local counts, order = {}, {}
  for _, packed in ipairs({old, new}) do
    local at = 1
    while at < #packed do
      local key, count
      key, count, at = struct.unpack('<i4I4', packed, at)
      if counts[key] then
        counts[key] = counts[key] + count
      else
        counts[key] = count
        order[#order + 1] = key
      end
    end
  end
  local parts = {}
  for i, key in ipairs(order) do
    parts[i] = struct.pack('<i4I4', key, counts[key])
  end
  return table.concat(parts)
end

local expiring = {}
for _ = 1, tonumber(take()) do
  local key = KEYS[tonumber(take())]
  local field, summary, bins, expire_at = take(), take(), take(), take()
  local bins_field = field .. 'h'
  local old = redis.call('HMGET', key, field, bins_field)
  if old[1] then
    summary = merge_summary(old[1], summary)
  end
  if old[2] then
    bins = merge_bins(old[2], bins)
  end
  redis.call('HSET', key, field, summary, bins_field, bins)
  if not expiring[key] then
    redis.call('PEXPIREAT', key, expire_at)
    expiring[key] = true
  end
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
