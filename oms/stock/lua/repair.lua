-- Drift: make one node's available hash agree with on-hand - reserved again, and set on-hand
-- where PostgreSQL's differs (the reconciler passes only drift it saw twice). O(SKUs): the
-- records are not walked here (reserved against the sum of the records: tally.lua, shift.lua).
-- KEYS[1] on-hand hash, KEYS[2] reserved hash, KEYS[3] available hash (all {node})
-- ARGV: sku, on-hand ... to set
-- Returns the number of fields repaired, or -1 when the node is fenced (a rebuild will do).
if redis.call('HEXISTS', KEYS[3], '\0gen') == 0 then
  return -1
end
local fixed = 0
for i = 1, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if old ~= tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    fixed = fixed + 1
  end
end
local skus = {}
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[3]}) do
  for _, sku in ipairs(redis.call('HKEYS', key)) do skus[sku] = true end
end
skus['\0gen'] = nil
skus['\0k'] = nil
for sku in pairs(skus) do
  local a = tonumber(redis.call('HGET', KEYS[1], sku) or '0') - tonumber(redis.call('HGET', KEYS[2], sku) or '0')
  if tonumber(redis.call('HGET', KEYS[3], sku) or 'nil') ~= a then
    redis.call('HSET', KEYS[3], sku, a)
    fixed = fixed + 1
  end
end
return fixed
