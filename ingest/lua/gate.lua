-- The settlement's gate alone (see settle.lua): 1 when the batch is the consumer's to settle,
-- 0 when it is not, -1 while an older entry of the group is unsettled. Changes nothing.
return settle_gate(read_settlement())
