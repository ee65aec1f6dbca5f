-- Roll the finest tier up into the coarse tiers, one step: the fine bucket at the mark, for
-- up to `count` sensors from the mark's sensor number on, every metric. Each fine record is
-- merged into the coarse bucket holding it, and the mark moves past those sensors (past the
-- bucket after its last sensor, then over following buckets no metric has data in). See
-- apply_batch.lua for what the mark means to a batch.
--
-- Returns {bucket, sensor} of the mark after the step; {-1} when there is no mark yet (nothing
-- aggregated); {-2, bucket, sensor} when the mark is not where the caller thought (another
-- worker moved it) or {-3} when metrics were added since the caller listed them: nothing
-- changed, ask again.
--
-- KEYS: 1 mark hash, 2 sensor names list, 3 metric names set, then for each metric: the fine
-- tier's chunk and fleet bucket keys for the mark's bucket, then for each coarse tier its chunk
-- and fleet bucket keys for the bucket that holds it; then for each following bucket that may
-- be skipped, each metric's fine fleet bucket key.
-- ARGV: mark bucket, mark sensor, count, fine bucket ms, n metrics, the metrics, n coarse
--       tiers, for each its bucket ms, then for each metric and coarse tier the expire-at ms
--       of the chunk key and of the fleet bucket key, then n buckets that may be skipped.

local mark, sensor_names, metric_names = KEYS[1], KEYS[2], KEYS[3]
local at = redis.call('HMGET', mark, 'bucket', 'sensor')
if not at[1] then
  return {-1}
end
local bucket, sensor = tonumber(at[1]), tonumber(at[2])
if bucket ~= tonumber(ARGV[1]) or sensor ~= tonumber(ARGV[2]) then
  return {-2, bucket, sensor}
end
local count, fine_ms, n_metrics = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('SCARD', metric_names) ~= n_metrics then
  return {-3}
end
local n_coarse = tonumber(ARGV[6 + n_metrics])
local coarse_ms = {}
for c = 1, n_coarse do
  coarse_ms[c] = tonumber(ARGV[6 + n_metrics + c])
end
local expiry_at = 7 + n_metrics + n_coarse
local per_metric = 2 + 2 * n_coarse

local n_sensors = redis.call('LLEN', sensor_names)
local last = math.min(sensor + count, n_sensors) - 1
local names = last >= sensor and redis.call('LRANGE', sensor_names, sensor, last) or {}
local fleet = fleet_writer()
for m = 1, n_metrics do
  local keys_at = 3 + per_metric * (m - 1)
  local summaries = redis.call('GETRANGE', KEYS[keys_at + 2], sensor * SUMMARY_BYTES,
    (last + 1) * SUMMARY_BYTES - 1)
  local fields, numbers = {}, {}
  for i = 1, math.min(#names, math.floor(#summaries / SUMMARY_BYTES)) do
    if struct.unpack('<d', summaries, (i - 1) * SUMMARY_BYTES + 1) > 0 then
      fields[#fields + 1] = names[i] .. '|' .. ARGV[1]
      numbers[#numbers + 1] = sensor + i - 1
    end
  end
  if #fields > 0 then
    local records = call_in_slices('HMGET', KEYS[keys_at + 1], fields, 7000)
    for c = 1, n_coarse do
      local coarse_bucket = string.format('%.0f', bucket - bucket % coarse_ms[c])
      local chunk, fleet_key = KEYS[keys_at + 2 * c + 1], KEYS[keys_at + 2 * c + 2]
      local items = {}
      for i, record in ipairs(records) do
        if record then
          local name = string.sub(fields[i], 1, #fields[i] - #ARGV[1] - 1)
          items[#items + 1] = {name .. '|' .. coarse_bucket, record, 1, #record, fleet_key, numbers[i]}
        end
      end
      -- The last fine bucket of a coarse one leaves its histogram with one entry per bin.
      merge_items(chunk, items, fleet, (bucket + fine_ms) % coarse_ms[c] == 0)
      fleet.flush()
      local expiry = expiry_at + 2 * ((m - 1) * n_coarse + c - 1)
      redis.call('PEXPIREAT', chunk, ARGV[expiry])
      redis.call('PEXPIREAT', fleet_key, ARGV[expiry + 1])
    end
  end
end

sensor = last + 1
if sensor >= n_sensors then
  bucket, sensor = bucket + fine_ms, 0
  local skip_at = expiry_at + 2 * n_metrics * n_coarse
  local skip_keys = 3 + per_metric * n_metrics
  for b = 1, tonumber(ARGV[skip_at]) do
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
end
redis.call('HSET', mark, 'bucket', string.format('%.0f', bucket), 'sensor', sensor)
return {bucket, sensor}
