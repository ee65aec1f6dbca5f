-- Acknowledge one open alert: note who and when on its open record and record the change on the
-- alerts stream, at once, so a resolution the alerts group commits meanwhile cannot interleave.
-- KEYS: 1 alerts stream, 2 open-alerts hash.
-- ARGV: 1 open field (`sensor|rule`), 2 by, 3 comment, 4 now (ms), 5 alerts stream cap.
-- Returns the alerts stream entry ID, or false when no such alert is open.
local alerts, open = KEYS[1], KEYS[2]
local field, by, comment, now_ms, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local text = redis.call('HGET', open, field)
if not text then
  return false
end
local record = cjson.decode(text)
record['acknowledged_by'] = by
record['acknowledged_ms'] = now_ms
record['comment'] = comment
redis.call('HSET', open, field, cjson.encode(record))
return redis.call('XADD', alerts, 'MAXLEN', '~', maxlen, '*',
                  'sensor_id', record['sensor_id'], 'rule', record['rule'],
                  'kind', record['kind'] or '', 'severity', record['severity'] or '',
                  'metric', record['metric'] or '', 'state', 'acknowledged', 'ts', now_ms,
                  'raised_ts', record['ts'], 'by', by, 'comment', comment,
                  'message', 'acknowledged by ' .. by)
