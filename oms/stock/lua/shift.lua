-- Repair reserved against the sum of the records by a difference the reconciler saw twice:
-- reserved moves by the delta and available by the opposite, never overwritten (the sum came from
-- a walk that was not atomic). A decrease stops at the floor: what PostgreSQL holds open there,
-- so available never exceeds on-hand minus that.
-- KEYS[1] available hash, KEYS[2] reserved hash (both {node})
-- ARGV: the generation the difference was seen under, then sku, delta, floor ...
-- Returns the number of SKUs moved, or -1 when the node was rebuilt since (the difference is moot).
if (redis.call('HGET', KEYS[1], '\0gen') or '') ~= ARGV[1] then
  return -1
end
local moved = 0
for i = 2, #ARGV, 3 do
  local sku, d, floor = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local r = tonumber(redis.call('HGET', KEYS[2], sku) or '0')
  if d < 0 and r + d < floor then d = math.min(floor - r, 0) end
  if d ~= 0 then
    if r + d == 0 then redis.call('HDEL', KEYS[2], sku) else redis.call('HINCRBY', KEYS[2], sku, d) end
    redis.call('HINCRBY', KEYS[1], sku, -d)
    moved = moved + 1
  end
end
return moved
