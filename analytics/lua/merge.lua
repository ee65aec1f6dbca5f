-- Merging bucket records, shared by the scripts that write aggregates (each is sent to Redis
-- with this file in front of it).
--
-- A record (see analytics/stats.py) is a summary of SUMMARY_BYTES, then histogram bins as
-- (int32 key, uint32 count) pairs. A fleet bucket holds each sensor's summary at its number
-- times SUMMARY_BYTES. SUMMARY, SUMMARY_BYTES, merge_summary and folded_summary come from
-- analytics/summary.py, which writes them from the summary's definition.

-- Redis's Lua takes at most ~8000 values from unpack(); call in slices. Returns the replies'
-- elements end to end (none for replies that are not arrays).
local function call_in_slices(command, key, values, per_call)
  if #values == 0 then
    return {}
  elseif #values <= per_call then
    local got = redis.call(command, key, unpack(values))
    return type(got) == 'table' and got or {}
  end
  local out = {}
  for first = 1, #values, per_call do
    local got = redis.call(command, key, unpack(values, first, math.min(first + per_call - 1, #values)))
    if type(got) == 'table' then
      for _, v in ipairs(got) do out[#out + 1] = v end
    end
  end
  return out
end

-- `count` little-endian values of struct format `code`, `width` bytes each, packed end to
-- end; unpacked a slice at a time (see call_in_slices).
local function unpack_values(code, width, packed, count)
  local out = {}
  for first = 0, count - 1, 4000 do
    local n = math.min(4000, count - first)
    local values = {struct.unpack('<' .. string.rep(code, n), packed, first * width + 1)}
    for j = 1, n do
      out[first + j] = values[j]
    end
  end
  return out
end

-- Histograms: (int32 key, uint32 count) pairs, in no particular order. Unpacked and packed with
-- one struct call each, since a stored histogram can hold hundreds of bins.
local function merge_bins(old, new)
  local counts = {}
  for _, packed in ipairs({old, new}) do
    local n = #packed / 8
    if n > 0 then
      local values = {struct.unpack('<' .. string.rep('i4I4', n), packed)}
      for i = 1, 2 * n, 2 do
        local key = values[i]
        counts[key] = (counts[key] or 0) + values[i + 1]
      end
    end
  end
  local flat, n = {}, 0
  for key, count in pairs(counts) do
    flat[n + 1], flat[n + 2] = key, count
    n = n + 2
  end
  return struct.pack('<' .. string.rep('i4I4', n / 2), unpack(flat))
end

-- A histogram may list a bin more than once (readers add them up): new bins are appended, and
-- merged into one entry per bin only when the histogram grows past a limit. Merging on every
-- update would cost most of the script's time for the coarse tiers' wide histograms.
local COMPACT_BYTES = 2048

-- The record `stored` (false or nil when there is none) merged with the record at bytes
-- from..to of `packed`, and the merged summary. With `compact`, the histogram is merged into
-- one entry per bin whatever its size.
local function merged_record(stored, packed, from, to, compact)
  if not stored then
    local summary = string.sub(packed, from, from + SUMMARY_BYTES - 1)
    -- A roll-up pass may bring a whole coarse bucket at once, folded from several records.
    if compact then
      return summary .. merge_bins('', string.sub(packed, from + SUMMARY_BYTES, to)), summary
    end
    return string.sub(packed, from, to), summary
  end
  local summary = merge_summary(stored, packed, from)
  local new_bins = string.sub(packed, from + SUMMARY_BYTES, to)
  if not compact and #stored - SUMMARY_BYTES + #new_bins <= COMPACT_BYTES then
    return summary .. string.sub(stored, SUMMARY_BYTES + 1) .. new_bins, summary
  end
  return summary .. merge_bins(string.sub(stored, SUMMARY_BYTES + 1), new_bins), summary
end

-- Whole records merged into one, in one pass: merging them pair by pair would copy (and once
-- past COMPACT_BYTES, unpack) the growing histogram again for each.
local function folded_record(records)
  if #records == 1 then
    return records[1]
  end
  local bins = {}
  for k = 1, #records do
    bins[k] = string.sub(records[k], SUMMARY_BYTES + 1)
  end
  local all = table.concat(bins)
  if #all > COMPACT_BYTES then
    all = merge_bins('', all)
  end
  return folded_summary(records) .. all
end

-- Writes summaries into fleet buckets. Neighbouring sensors' summaries in one fleet bucket (a
-- batch mostly holds sensors numbered one after another) are written with one SETRANGE, since
-- a command per summary would cost more than the merge itself.
local function fleet_writer()
  local run_key, run_from, run_next, run = nil, 0, 0, {}
  local writer = {}
  function writer.flush()
    if run_key then
      redis.call('SETRANGE', run_key, run_from * SUMMARY_BYTES, table.concat(run))
      run_key = nil
    end
  end
  function writer.add(key, number, summary)
    if key == run_key and number == run_next then
      run[#run + 1] = summary
    else
      writer.flush()
      run_key, run_from, run = key, number, {summary}
    end
    run_next = number + 1
  end
  return writer
end

-- Merges records into the hash `key`: each item {field, packed, from, to, fleet key, sensor
-- number} adds the record at bytes from..to of `packed` to `field`, in order (a field may come
-- more than once), and the field's final summary goes to the sensor's place in the fleet
-- bucket, unless `packed` (the hash's chunk is packed: its fleet buckets are gone, and its
-- records lack the blobs' share). `compact` as for merged_record.
local function merge_items(key, items, fleet, compact, packed)
  local fields, last = {}, {}
  for _, item in ipairs(items) do
    if not last[item[1]] then
      fields[#fields + 1] = item[1]
    end
    last[item[1]] = item
  end
  local stored = call_in_slices('HMGET', key, fields, 7000)
  local current, summaries = {}, {}
  for i, field in ipairs(fields) do
    current[field] = stored[i]
  end
  for _, item in ipairs(items) do
    current[item[1]], summaries[item[1]] = merged_record(current[item[1]], item[2], item[3],
      item[4], compact)
  end
  local values = {}
  for _, field in ipairs(fields) do
    values[#values + 1] = field
    values[#values + 1] = current[field]
    if not packed then
      fleet.add(last[field][5], last[field][6], summaries[field])
    end
  end
  call_in_slices('HSET', key, values, 7000)
end
