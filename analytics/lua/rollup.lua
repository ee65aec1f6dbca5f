-- Roll the finest tier up into the coarse tiers, one step of a pass.
--
-- The mark (see apply_batch.lua) is a fine bucket, a sensor number and the end of the pass
-- under way: fine bucket B of sensor N is rolled up when B < bucket, or B < until and
-- N < sensor. A pass takes the fine buckets [bucket, until), within one fine chunk, a range
-- of sensors per step: a sensor's fine records that fall in one coarse bucket are merged
-- among themselves first, then into the stored coarse record once. After its last sensor the
-- mark moves to the pass's end, then over following buckets no metric has data in.
--
-- Returns {bucket, sensor} of the mark after the step; {-1} when there is no mark yet (nothing
-- aggregated); {-2} when the mark is not where the caller thought (another worker moved it)
-- or {-3} when metrics were added since the caller listed them: nothing changed, ask again.
--
-- KEYS: 1 mark hash, 2 sensor names list, 3 metric names set, then for each metric: the fine
-- tier's chunk key, the fine fleet bucket key of each bucket of the pass, then for each coarse
-- tier the chunk and fleet bucket keys of each of its buckets the pass touches; then for each
-- bucket from the pass's end on that may be skipped, each metric's fine fleet bucket key.
-- ARGV: mark bucket, mark sensor, pass end, sensors this step, fine bucket ms, n metrics, the
--       metrics, n coarse tiers, for each its bucket ms and how many of its buckets the pass
--       touches, then for each metric, coarse tier and bucket touched the expire-at ms of the
--       chunk key and of the fleet bucket key, then n buckets that may be skipped.

local mark, sensor_names, metric_names = KEYS[1], KEYS[2], KEYS[3]
local at = redis.call('HMGET', mark, 'bucket', 'sensor', 'until')
if not at[1] then
  return {-1}
end
local bucket, sensor, pass_end = tonumber(at[1]), tonumber(at[2]), tonumber(ARGV[3])
if bucket ~= tonumber(ARGV[1]) or sensor ~= tonumber(ARGV[2])
    or (sensor > 0 and tonumber(at[3]) ~= pass_end) then
  return {-2}
end
local count, fine_ms, n_metrics = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('SCARD', metric_names) ~= n_metrics then
  return {-3}
end
local pos = 7 + n_metrics
local n_coarse = tonumber(ARGV[pos])
local coarse_ms, touched = {}, {}
local n_buckets = (pass_end - bucket) / fine_ms
local per_metric = 1 + n_buckets
for c = 1, n_coarse do
  coarse_ms[c], touched[c] = tonumber(ARGV[pos + 2 * c - 1]), tonumber(ARGV[pos + 2 * c])
  per_metric = per_metric + 2 * touched[c]
end
local expiry = pos + 2 * n_coarse + 1

local n_sensors = redis.call('LLEN', sensor_names)
local last = math.min(sensor + count, n_sensors) - 1
local names = last >= sensor and redis.call('LRANGE', sensor_names, sensor, last) or {}
local fleet = fleet_writer()
for m = 1, n_metrics do
  local keys_at = 3 + per_metric * (m - 1)
  -- Every fine record of the pass for these sensors: field, sensor (from 1), fine bucket.
  local fields, owner, starts = {}, {}, {}
  for j = 0, n_buckets - 1 do
    local start = bucket + j * fine_ms
    local summaries = redis.call('GETRANGE', KEYS[keys_at + 2 + j], sensor * SUMMARY_BYTES,
      (last + 1) * SUMMARY_BYTES - 1)
    local suffix = '|' .. string.format('%.0f', start)
    for i = 1, math.min(#names, math.floor(#summaries / SUMMARY_BYTES)) do
      if struct.unpack('<d', summaries, (i - 1) * SUMMARY_BYTES + 1) > 0 then
        fields[#fields + 1] = names[i] .. suffix
        owner[#fields], starts[#fields] = i, start
      end
    end
  end
  local records = #fields > 0 and call_in_slices('HMGET', KEYS[keys_at + 1], fields, 7000) or {}
  local coarse_keys = keys_at + 1 + n_buckets
  for c = 1, n_coarse do
    local first_coarse = bucket - bucket % coarse_ms[c]
    -- Per coarse bucket touched (from 0), per sensor: the fine records to merge.
    local folded = {}
    for ci = 0, touched[c] - 1 do
      folded[ci] = {}
    end
    for f, record in ipairs(records) do
      if record then
        local ci = (starts[f] - starts[f] % coarse_ms[c] - first_coarse) / coarse_ms[c]
        local i = owner[f]
        local list = folded[ci][i]
        if list then
          list[#list + 1] = record
        else
          folded[ci][i] = {record}
        end
      end
    end
    for ci = 0, touched[c] - 1 do
      local coarse_start = first_coarse + ci * coarse_ms[c]
      local chunk, fleet_key = KEYS[coarse_keys + 2 * ci + 1], KEYS[coarse_keys + 2 * ci + 2]
      local items, suffix = {}, '|' .. string.format('%.0f', coarse_start)
      for i = 1, #names do
        local record = folded[ci][i] and folded_record(folded[ci][i])
        if record then
          items[#items + 1] = {names[i] .. suffix, record, 1, #record, fleet_key, sensor + i - 1}
        end
      end
      if #items > 0 then
        -- A pass that ends the coarse bucket leaves its histogram with one entry per bin.
        merge_items(chunk, items, fleet, coarse_start + coarse_ms[c] <= pass_end)
        fleet.flush()
        redis.call('PEXPIREAT', chunk, ARGV[expiry])
        redis.call('PEXPIREAT', fleet_key, ARGV[expiry + 1])
      end
      expiry = expiry + 2
    end
    coarse_keys = coarse_keys + 2 * touched[c]
  end
end

sensor = last + 1
local until_field = pass_end
if sensor >= n_sensors then
  bucket, sensor = pass_end, 0
  local skip_keys = 3 + per_metric * n_metrics
  for b = 1, tonumber(ARGV[expiry]) do
    local empty = true
    for m = 1, n_metrics do
      if redis.call('EXISTS', KEYS[skip_keys + (b - 1) * n_metrics + m]) == 1 then
        empty = false
      end
    end
    if not empty then
      break
    end
    bucket = bucket + fine_ms
  end
  until_field = bucket
end
redis.call('HSET', mark, 'bucket', string.format('%.0f', bucket), 'sensor', sensor,
  'until', string.format('%.0f', until_field))
return {bucket, sensor}
