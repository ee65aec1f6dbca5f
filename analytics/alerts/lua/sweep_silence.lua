-- Raise a silence alert for every sensor a silence rule has not heard from for its `after`.
--
-- "Now" is the time up to which the alerts group has settled the stream: Redis's clock when the
-- group has read everything and holds nothing pending, else the time of the oldest entry it has
-- not settled. A group catching up on a backlog therefore never mistakes unread readings for
-- silence. Raised sensors leave the heard set; the commit script puts them back when they speak
-- and resolves the alert. Returns the number of alerts raised.
--
-- KEYS: 1 stream, 2 alerts stream, 3 open-alerts hash, 3 + i: rule i's heard set.
-- ARGV: group, alerts maxlen, n rules, (after ms, n fields, (field, value)...)... where the fields
--       are the rule's part of the alert record (rule, kind, severity, metric, limit).

local stream, alerts, open = KEYS[1], KEYS[2], KEYS[3]
local group, maxlen = ARGV[1], ARGV[2]
local pos = 3
local SWEEP_LIMIT = 1000

local function take()
  pos = pos + 1
  return ARGV[pos]
end

local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function newer(a, b)
  local a_ms, a_seq = parse_id(a)
  local b_ms, b_seq = parse_id(b)
  return a_ms > b_ms or (a_ms == b_ms and a_seq > b_seq)
end

local time = redis.call('TIME')
local wall_ms = time[1] * 1000 + math.floor(time[2] / 1000)
local now_ms = wall_ms
if redis.call('EXISTS', stream) == 1 then
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local fields = {}
    for i = 1, #info, 2 do
      fields[info[i]] = info[i + 1]
    end
    if fields['name'] == group then
      local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
      local delivered = fields['last-delivered-id']
      if newest and newer(newest[1], delivered) then
        now_ms = math.min(now_ms, (parse_id(delivered)))
      end
      local oldest = redis.call('XPENDING', stream, group, '-', '+', 1)[1]
      if oldest then
        now_ms = math.min(now_ms, parse_id(oldest[1]) - 1)
      end
    end
  end
end

local raised = 0
for i = 1, tonumber(ARGV[3]) do
  local heard = KEYS[3 + i]
  local after_ms = tonumber(take())
  local template = {}
  for j = 1, tonumber(take()) * 2 do
    template[j] = take()
  end
  local quiet = redis.call('ZRANGEBYSCORE', heard, '-inf', now_ms - after_ms, 'WITHSCORES',
                          'LIMIT', 0, SWEEP_LIMIT)
  for j = 1, #quiet, 2 do
    local sensor, heard_ms = quiet[j], quiet[j + 1]
    redis.call('ZREM', heard, sensor)
    local record = {}
    for k = 1, #template, 2 do
      record[template[k]] = template[k + 1]
    end
    local field = sensor .. '|' .. record['rule']
    if redis.call('HEXISTS', open, field) == 0 then
      record['sensor_id'] = sensor
      record['state'] = 'raised'
      record['ts'] = tostring(now_ms)
      record['value'] = tostring(now_ms - tonumber(heard_ms))
      record['last_heard_ms'] = heard_ms
      record['detected_ms'] = tostring(wall_ms)
      local fields = {}
      for name, value in pairs(record) do
        fields[#fields + 1] = name
        fields[#fields + 1] = value
      end
      record['id'] = redis.call('XADD', alerts, 'MAXLEN', '~', maxlen, '*', unpack(fields))
      redis.call('HSET', open, field, cjson.encode(record))
      raised = raised + 1
    end
  end
end
return raised
