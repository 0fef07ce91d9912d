-- One page of the reconciler's full walk: the units the given records hold, summed per SKU, and
-- the index entries whose record is gone (dropped from the index here: nothing holds them).
-- KEYS[1] the record index ({node}; records are ARGV[1] .. fulfilment id, the same slot)
-- ARGV: record key prefix, fid1, fid2, ...
-- Returns sku1, units1, ..., '', then the fids dropped from the index.
local sums, out, gone = {}, {}, {}
for i = 2, #ARGV do
  local rec = redis.call('HGETALL', ARGV[1] .. ARGV[i])
  if #rec == 0 then
    if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then gone[#gone + 1] = ARGV[i] end
  end
  for j = 1, #rec, 2 do
    sums[rec[j]] = (sums[rec[j]] or 0) + tonumber(rec[j + 1])
  end
end
for sku, units in pairs(sums) do
  out[#out + 1] = sku
  out[#out + 1] = units
end
out[#out + 1] = ''
for _, fid in ipairs(gone) do out[#out + 1] = fid end
return out
