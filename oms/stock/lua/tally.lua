-- The end of the reconciler's full walk over one node: at one instant, its generation, its
-- reserved hash and the units held by the records made since the walk's cut-off (the walk summed
-- the older ones, which only shrink or go meanwhile: no reservation is made under an old id).
-- KEYS[1] available hash, KEYS[2] reserved hash, KEYS[3] the recent index (all {node}; records
-- are ARGV[1] .. fulfilment id)
-- ARGV: record key prefix, the cut-off score (milliseconds in the fulfilment id)
-- Returns {generation or '', {sku, reserved, ...}, {sku, units of recent records, ...}}.
local gen = redis.call('HGET', KEYS[1], '\0gen') or ''
local sums, recent = {}, {}
for _, fid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[2], '+inf')) do
  local rec = redis.call('HGETALL', ARGV[1] .. fid)
  for j = 1, #rec, 2 do
    sums[rec[j]] = (sums[rec[j]] or 0) + tonumber(rec[j + 1])
  end
end
for sku, units in pairs(sums) do
  recent[#recent + 1] = sku
  recent[#recent + 1] = units
end
return {gen, redis.call('HGETALL', KEYS[2]), recent}
