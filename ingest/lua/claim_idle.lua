-- Claim entries idle longer than a minimum from any consumer of a group (XAUTOCLAIM), count
-- the claim as a hand-over, and count the claimed entries whose data MAXLEN trimmed away as
-- lost: XAUTOCLAIM drops those from the pending list, so the count must change with it, or the
-- group's ledger would not balance in between.
-- KEYS[1] stream, KEYS[2] the group's hand-over counter, KEYS[3] losses per group;
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] minimum idle ms, ARGV[4] cursor, ARGV[5] count.
-- Returns XAUTOCLAIM's reply: {next cursor, claimed entries, IDs of trimmed entries}.
redis.call('INCR', KEYS[2])
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  'COUNT', ARGV[5])
if #reply[3] > 0 then
  redis.call('HINCRBY', KEYS[3], ARGV[1], #reply[3])
end
return reply
