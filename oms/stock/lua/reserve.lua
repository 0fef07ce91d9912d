-- Reserve every line an order takes at one node, or none.
-- KEYS[1] available hash, KEYS[2] reserved hash, KEYS[3] this reservation's record,
-- KEYS[4] the node's record index (fulfilment id -> owning process), KEYS[5] the recent index
-- (fulfilment id scored by the milliseconds in its id, trimmed by the reconciler) (all {node})
-- ARGV: owner, fulfilment id, sku1, qty1, sku2, qty2, ...
-- Returns {1, gen} reserved, {2, gen} already reserved (a retry: nothing changes),
-- {0, sku, available} for the first line that does not fit, or {-1} when the node's generation
-- marker is missing: Redis lost this node's stock (flush, failover) and nothing may be decided
-- on it until it is rebuilt from PostgreSQL.
local gen = redis.call('HGET', KEYS[1], '\0gen')
if not gen then
  return {-1}
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {2, gen}
end
for i = 3, #ARGV, 2 do
  local available = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if available < tonumber(ARGV[i + 1]) then
    return {0, ARGV[i], available}
  end
end
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], -ARGV[i + 1])
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[4], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], tonumber(string.sub(ARGV[2], 2, 10), 36) or 0, ARGV[2])
return {1, gen}
