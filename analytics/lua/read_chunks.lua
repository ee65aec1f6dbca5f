-- Some sensors' buckets of one tier over a run of chunks, as stored (call_in_slices is
-- merge.lua's): each chunk's records
-- (those written since it was packed, or all of them while it is open) and its packed blobs.
-- Read in one call so that a chunk being packed meanwhile is seen before or after, and so
-- that the field names are built here rather than sent: a day of one-minute buckets is 1,440.
--
-- KEYS: for each chunk its records hash, then its packed hash.
-- ARGV: n sensors, the sensor ids, then for each chunk: its first bucket start (ms), how many
--       buckets are asked for, the bucket size (ms).
-- Returns for each chunk: the records, bucket by bucket and sensor by sensor within a bucket
-- (an empty list when the hash is gone), then the blobs, sensor by sensor.

local n_sensors = tonumber(ARGV[1])
local sensors = {}
for i = 1, n_sensors do
  sensors[i] = ARGV[1 + i]
end
local out = {}
local at = 2 + n_sensors
for c = 1, #KEYS / 2 do
  local loose, packed = KEYS[2 * c - 1], KEYS[2 * c]
  local first, count, step = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  at = at + 3
  local records = {}
  if redis.call('EXISTS', loose) == 1 and count > 0 then
    local fields = {}
    for b = 0, count - 1 do
      local suffix = '|' .. string.format('%.0f', first + b * step)
      for i = 1, n_sensors do
        fields[#fields + 1] = sensors[i] .. suffix
      end
    end
    records = call_in_slices('HMGET', loose, fields, 7000)
  end
  out[#out + 1] = records
  local blobs = {}
  if redis.call('EXISTS', packed) == 1 then
    blobs = call_in_slices('HMGET', packed, sensors, 7000)
  end
  out[#out + 1] = blobs
end
return out
