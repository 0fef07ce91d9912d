-- Hand-over: the reserved units leave the building, so on-hand and reserved both go down
-- (available does not move: those units were already not available).
-- KEYS[1] on-hand hash, KEYS[2] reserved hash, KEYS[3] the reservation's record,
-- KEYS[4] the node's record index (all {node}); ARGV[1] fulfilment id
-- Returns units committed (0 when the record is gone: already committed or released).
local rec = redis.call('HGETALL', KEYS[3])
local units = 0
for i = 1, #rec, 2 do
  local sku, qty = rec[i], tonumber(rec[i + 1])
  redis.call('HINCRBY', KEYS[1], sku, -qty)
  redis.call('HINCRBY', KEYS[2], sku, -qty)
  units = units + qty
end
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[4], ARGV[1])
return units
