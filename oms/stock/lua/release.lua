-- Give back reserved units: all of a reservation, or only the named lines.
-- KEYS[1] available hash, KEYS[2] reserved hash, KEYS[3] the reservation's record,
-- KEYS[4] the node's record index (all {node})
-- ARGV: fulfilment id, then nothing for all, else sku1, qty1, ... (capped at what the record holds)
-- Returns the number of units released (0 when already released: idempotent).
local released = 0
local function give(sku, qty)
  local held = tonumber(redis.call('HGET', KEYS[3], sku) or '0')
  if qty > held then qty = held end
  if qty <= 0 then return end
  redis.call('HINCRBY', KEYS[1], sku, qty)
  redis.call('HINCRBY', KEYS[2], sku, -qty)
  if redis.call('HINCRBY', KEYS[3], sku, -qty) <= 0 then redis.call('HDEL', KEYS[3], sku) end
  released = released + qty
end
if #ARGV == 1 then
  local rec = redis.call('HGETALL', KEYS[3])
  for i = 1, #rec, 2 do give(rec[i], tonumber(rec[i + 1])) end
else
  for i = 2, #ARGV, 2 do give(ARGV[i], tonumber(ARGV[i + 1])) end
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('HDEL', KEYS[4], ARGV[1])
end
return released
