-- Drift: make one node's hashes agree with its reservation records again, and set on-hand
-- where PostgreSQL's differs (the reconciler passes only drift it saw twice).
-- KEYS[1] on-hand hash, KEYS[2] reserved hash, KEYS[3] available hash, KEYS[4] the node's
-- record index (all {node}; records are ARGV[1] .. fulfilment id, the same slot)
-- ARGV: record key prefix, then sku, on-hand ... to set
-- Returns the number of fields repaired, or -1 when the node is fenced (a rebuild will do).
if redis.call('HEXISTS', KEYS[3], '\0gen') == 0 then
  return -1
end
local fixed = 0
local prefix = ARGV[1]
for i = 2, #ARGV, 2 do
  local old = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if old ~= tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    fixed = fixed + 1
  end
end
local want = {}
for _, fid in ipairs(redis.call('HKEYS', KEYS[4])) do
  local rec = redis.call('HGETALL', prefix .. fid)
  if #rec == 0 then
    redis.call('HDEL', KEYS[4], fid)
    fixed = fixed + 1
  end
  for j = 1, #rec, 2 do
    want[rec[j]] = (want[rec[j]] or 0) + tonumber(rec[j + 1])
  end
end
local skus = {}
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[3]}) do
  for _, sku in ipairs(redis.call('HKEYS', key)) do skus[sku] = true end
end
for sku in pairs(want) do skus[sku] = true end
skus['\0gen'] = nil
skus['\0k'] = nil
for sku in pairs(skus) do
  local r = want[sku] or 0
  if tonumber(redis.call('HGET', KEYS[2], sku) or '0') ~= r then
    if r == 0 then redis.call('HDEL', KEYS[2], sku) else redis.call('HSET', KEYS[2], sku, r) end
    fixed = fixed + 1
  end
  local a = tonumber(redis.call('HGET', KEYS[1], sku) or '0') - r
  if tonumber(redis.call('HGET', KEYS[3], sku) or 'nil') ~= a then
    redis.call('HSET', KEYS[3], sku, a)
    fixed = fixed + 1
  end
end
return fixed
