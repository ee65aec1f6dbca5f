-- Zero one sensor's summary in fleet buckets, leaving alone a bucket too short to hold it (the
-- sensor had no readings there) and never creating one.
-- KEYS: fleet buckets. ARGV: 1 the summary's offset (its number times its size), 2 its size.
local offset, width = tonumber(ARGV[1]), tonumber(ARGV[2])
local zeroed = 0
for _, key in ipairs(KEYS) do
  local length = redis.call('STRLEN', key)
  if length > offset then
    redis.call('SETRANGE', key, offset, string.rep('\0', math.min(width, length - offset)))
    zeroed = zeroed + 1
  end
end
return zeroed
