-- The reservation records of one node made since a moment, with their owners: what the
-- reconciler's fast pass reads instead of the whole record index. Trims the recent index too.
-- KEYS[1] the recent index, KEYS[2] the record index (both {node})
-- ARGV: lowest score (milliseconds in the fulfilment id) to return, score below which entries go
-- Returns fid1, owner1, ... for the entries whose record is still indexed.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
local out = {}
for _, fid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  local owner = redis.call('HGET', KEYS[2], fid)
  if owner then
    out[#out + 1] = fid
    out[#out + 1] = owner
  end
end
return out
