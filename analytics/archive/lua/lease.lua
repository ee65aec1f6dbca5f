-- The archiver's lease: KEYS 1 the lease; ARGV 1 'take' | 'keep' | 'give', 2 holder, 3 ms.
-- take: if free (or ours); keep: extend if ours; give: drop if ours. 1 when held, 0 when not.
local lease, action, holder, ms = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('GET', lease)
if action == 'take' and (not current or current == holder) then
  redis.call('SET', lease, holder, 'PX', ms)
  return 1
end
if current ~= holder then
  return 0
end
if action == 'give' then
  redis.call('DEL', lease)
  return 0
end
redis.call('PEXPIRE', lease, ms)
return 1
