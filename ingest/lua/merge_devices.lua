-- Merge notes about devices into the device registry, one JSON document per sensor.
--
-- KEYS[1] the registry hash (sensor id -> document), KEYS[2] the stream's meta hash (its
-- `dropped_fields` counts every field dropped, of sensors kept or not); ARGV[1] most sensors it keeps, ARGV[2] now
-- (ms), ARGV[3] most labels, ARGV[4] most units, then sensor id and note (JSON) pairs. A note's
-- `labels` and `units` are merged name by name (an empty value removes one; names past the
-- limit are not added), `online` and `profile` replace, `dropped` adds to the count and
-- `dropped_reason` replaces. A sensor not yet known is added only while the registry holds
-- fewer than ARGV[1]. Returns how many notes were refused for that.
local key = KEYS[1]
local most = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local limits = {labels = tonumber(ARGV[3]), units = tonumber(ARGV[4])}
local refused = 0
for i = 5, #ARGV, 2 do
  local sensor = ARGV[i]
  local note = cjson.decode(ARGV[i + 1])
  if note.dropped ~= nil then
    redis.call('HINCRBY', KEYS[2], 'dropped_fields', note.dropped)
  end
  local old = redis.call('HGET', key, sensor)
  local doc = nil
  if old then
    doc = cjson.decode(old)
  elseif redis.call('HLEN', key) < most then
    doc = {labels = {}, units = {}, dropped = 0, first_ms = now}
  else
    refused = refused + 1
  end
  if doc then
    for section, limit in pairs(limits) do
      local have = doc[section] or {}
      local count = 0
      for _ in pairs(have) do count = count + 1 end
      local changes = note[section] or {}
      -- Removals first, so that a note removing one name and adding another fits the limit.
      for name, value in pairs(changes) do
        if value == '' and have[name] ~= nil then
          have[name] = nil
          count = count - 1
        end
      end
      for name, value in pairs(changes) do
        if value ~= '' and (have[name] ~= nil or count < limit) then
          if have[name] == nil then
            count = count + 1
          end
          have[name] = value
        end
      end
      doc[section] = have
    end
    if note.online ~= nil then doc.online = note.online end
    if note.profile ~= nil then doc.profile = note.profile end
    if note.dropped ~= nil then
      doc.dropped = (doc.dropped or 0) + note.dropped
      doc.dropped_reason = note.dropped_reason
    end
    doc.updated_ms = now
    redis.call('HSET', key, sensor, cjson.encode(doc))
  end
end
return refused
