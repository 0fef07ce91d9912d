-- Install one node's stock as PostgreSQL holds it, and its generation marker last.
-- KEYS[1] on-hand hash, KEYS[2] reserved hash, KEYS[3] available hash, KEYS[4] the node's
-- record index, KEYS[5] its recent index (all {node}). Record keys are KEYS-prefix + fulfilment
-- id, built here from the index and ARGV[3]: the same {node} hash tag, so the same Redis Cluster slot.
-- ARGV: mode ('missing': only while the marker is absent; 'force'), generation ('' = none), record key
-- prefix, the recent index's lower bound (records whose id is older stay out of it), number of
-- SKUs, then sku, on-hand ... , number of records, then per record: fulfilment id, number of
-- lines, sku, qty ..., then (bucket 0 of a node split into stock buckets only) the number of
-- buckets, kept in the available hash's '\0k' field
-- Returns 1 installed, 0 not needed (another process installed it first).
if ARGV[1] == 'missing' and redis.call('HEXISTS', KEYS[3], '\0gen') == 1 then
  return 0
end
local prefix = ARGV[3]
local recent_from = tonumber(ARGV[4])
for _, fid in ipairs(redis.call('HKEYS', KEYS[4])) do
  redis.call('DEL', prefix .. fid)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
local onhand, reserved = {}, {}
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  onhand[ARGV[i]] = tonumber(ARGV[i + 1])
  i = i + 2
end
local nrec = tonumber(ARGV[i])
i = i + 1
for _ = 1, nrec do
  local fid, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  redis.call('DEL', prefix .. fid)
  for _ = 1, n do
    local sku, qty = ARGV[i], tonumber(ARGV[i + 1])
    redis.call('HINCRBY', prefix .. fid, sku, qty)
    reserved[sku] = (reserved[sku] or 0) + qty
    i = i + 2
  end
  redis.call('HSET', KEYS[4], fid, 'pg')
  local score = tonumber(string.sub(fid, 2, 10), 36) or 0
  if score >= recent_from then
    redis.call('ZADD', KEYS[5], score, fid)
  end
end
for sku, qty in pairs(onhand) do
  redis.call('HSET', KEYS[1], sku, qty)
  redis.call('HSET', KEYS[3], sku, qty - (reserved[sku] or 0))
end
for sku, qty in pairs(reserved) do
  redis.call('HSET', KEYS[2], sku, qty)
  if not onhand[sku] then redis.call('HSET', KEYS[3], sku, -qty) end
end
if ARGV[i] then
  redis.call('HSET', KEYS[3], '\0k', ARGV[i])
end
if ARGV[2] ~= '' then  -- '' installs without the marker: the caller sets it when settled
  redis.call('HSET', KEYS[3], '\0gen', ARGV[2])
end
return 1
