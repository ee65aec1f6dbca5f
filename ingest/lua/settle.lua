-- Settling a consumer group's batch exactly once, for every script that writes a batch's
-- effects (loaded before each of them): the gate says whether the batch is still this
-- consumer's to settle; `settle_finish` adds the batch's counts to the group's ledger and
-- acknowledges its entries, in the same script as the effects.
--
-- ingest/groups/settlement.py writes the arguments read here, ahead of the script's own:
-- KEYS: 1 stream, 2 the group's ledger, 3 the group's hand-over count.
-- ARGV: 1 group, 2 consumer, 3 the gate ('owned' or 'in_order'), 4 n ids, 5 ids
--       (comma-separated, in stream order), 6 the hand-over count when the batch was read ('' for
--       entries delivered before), 7 n ledger increments, then (field, amount)...
-- A script's own KEYS start at SETTLE_KEYS + 1, its own ARGV at the returned `next_arg`.

local SETTLE_KEYS = 3

local function read_settlement()
  local s = {stream = KEYS[1], ledger = KEYS[2], handovers = KEYS[3], group = ARGV[1],
             consumer = ARGV[2], gate = ARGV[3], ids = {}, increments = {}}
  for id in string.gmatch(ARGV[5], '[^,]+') do
    s.ids[#s.ids + 1] = id
  end
  if #s.ids ~= tonumber(ARGV[4]) or #s.ids == 0 then
    error('settle: ' .. #s.ids .. ' entry IDs where ' .. ARGV[4] .. ' were announced')
  end
  s.read_handovers = ARGV[6]
  local at = 8
  for i = 1, tonumber(ARGV[7]) do
    s.increments[i] = {ARGV[at], ARGV[at + 1]}
    at = at + 2
  end
  s.next_arg = at
  return s
end

-- 'owned': every entry of the batch is pending and owned by this consumer. A batch read as new
-- comes with the group's hand-over count at the read: while that count is unchanged no other
-- consumer took its entries, so the batch is all this consumer's if its first and last entries
-- are (a re-sent batch, settled already, has neither), and the others are not looked up.
local function owns_all(s)
  local ids, n = s.ids, #s.ids
  local function held(id)
    return #redis.call('XPENDING', s.stream, s.group, id, id, 1, s.consumer) == 1
  end
  if s.read_handovers ~= ''
      and tonumber(redis.call('GET', s.handovers) or '0') == tonumber(s.read_handovers) then
    return held(ids[1]) and held(ids[n])
  end
  local limit = n * 2 + 100
  local pending = redis.call('XPENDING', s.stream, s.group, ids[1], ids[n], limit, s.consumer)
  local owned = {}
  for _, entry in ipairs(pending) do
    owned[entry[1]] = true
  end
  for i = 1, n do
    if not owned[ids[i]] and (#pending < limit or not held(ids[i])) then
      return false
    end
  end
  return true
end

-- 'in_order': as 'owned', and every pending entry of the group up to the batch's last is one of
-- the batch's, so batches settle in stream order whatever the number of workers.
local function owns_oldest(s)
  local ids, n = s.ids, #s.ids
  local ours = {}
  for i = 1, n do
    ours[ids[i]] = true
  end
  local pending = redis.call('XPENDING', s.stream, s.group, '-', ids[n], n + 1)
  for _, entry in ipairs(pending) do
    if not ours[entry[1]] then
      return -1
    end
    if entry[2] ~= s.consumer then
      return 0
    end
  end
  return #pending == n and 1 or 0
end

-- 1 when the batch is this consumer's to settle; 0 when it is not (claimed by another consumer,
-- or settled already by this very script before a client re-send); -1 ('in_order' only) while
-- an older entry of the group is unsettled.
local function settle_gate(s)
  if s.gate == 'in_order' then
    return owns_oldest(s)
  elseif s.gate == 'owned' then
    return owns_all(s) and 1 or 0
  end
  error('settle: unknown gate ' .. tostring(s.gate))
end

local function settle_finish(s)
  for _, increment in ipairs(s.increments) do
    if tonumber(increment[2]) ~= 0 then
      redis.call('HINCRBY', s.ledger, increment[1], increment[2])
    end
  end
  for first = 1, #s.ids, 1000 do
    redis.call('XACK', s.stream, s.group, unpack(s.ids, first, math.min(first + 999, #s.ids)))
  end
end
