-- A reservation PostgreSQL holds (its order is committed) must be in Redis: put it back when a
-- rebuild since it was made lost it. No availability check: the units are already promised.
-- KEYS[1] available hash, KEYS[2] reserved hash, KEYS[3] the reservation's record,
-- KEYS[4] the node's record index, KEYS[5] the recent index (all {node})
-- ARGV: generation the reservation was made under ('' = unknown; '*' = put it back whatever the
-- marker says: the rebuild itself and the reconciler), owner, fulfilment id, sku1, qty1, ...
-- Returns 0 nothing to do, 1 re-applied, -1 the node is fenced (being rebuilt: ask again).
if ARGV[1] ~= '*' then
  local gen = redis.call('HGET', KEYS[1], '\0gen')
  if not gen then
    return -1
  end
  if gen == ARGV[1] then
    return 0
  end
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 0
end
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], -ARGV[i + 1])
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[4], ARGV[3], ARGV[2])
redis.call('ZADD', KEYS[5], tonumber(string.sub(ARGV[3], 2, 10), 36) or 0, ARGV[3])
return 1
