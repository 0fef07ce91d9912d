-- Set (ARGV[3] == 'set') or adjust (ARGV[3] == 'add') on-hand for one SKU; reserved stays as it
-- is and available moves by the same amount as on-hand. 'take' lowers on-hand by at most ARGV[2]
-- units and never below what is reserved (available stays >= 0): one half of a move between a
-- node's stock buckets, or a bucketed node's on-hand going down.
-- KEYS[1] on-hand hash, KEYS[2] reserved hash, KEYS[3] available hash ({node}); ARGV: sku, value, mode
-- Returns {1, on_hand, reserved} ('take': {1, on_hand, reserved, units taken}), or {-1} when the
-- node's generation marker is missing (Redis lost this node: reserved would be taken as 0 and
-- oversell; it is rebuilt first).
if not redis.call('HGET', KEYS[3], '\0gen') then
  return {-1}
end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local on_hand = tonumber(ARGV[2])
local taken = 0
if ARGV[3] == 'add' then
  on_hand = old + on_hand
elseif ARGV[3] == 'take' then
  local avail = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
  taken = math.max(math.min(on_hand, avail), 0)
  on_hand = old - taken
end
redis.call('HSET', KEYS[1], ARGV[1], on_hand)
redis.call('HINCRBY', KEYS[3], ARGV[1], on_hand - old)
local reserved = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if ARGV[3] == 'take' then
  return {1, on_hand, reserved, taken}
end
return {1, on_hand, reserved}
