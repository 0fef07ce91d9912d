-- Reserve every line an order takes at one node, or none.
-- KEYS[1] available hash, KEYS[2] reserved hash, KEYS[3] this reservation's record (all {node})
-- ARGV: sku1, qty1, sku2, qty2, ...
-- Returns {1} reserved, {2} already reserved (a retry: nothing changes),
-- or {0, sku, available} for the first line that does not fit.
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {2}
end
for i = 1, #ARGV, 2 do
  local available = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if available < tonumber(ARGV[i + 1]) then
    return {0, ARGV[i], available}
  end
end
for i = 1, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], -ARGV[i + 1])
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
end
return {1}
