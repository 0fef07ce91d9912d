-- Set (ARGV[3] == 'set') or adjust (ARGV[3] == 'add') on-hand for one SKU; reserved stays as it
-- is and available moves by the same amount as on-hand.
-- KEYS[1] on-hand hash, KEYS[2] reserved hash, KEYS[3] available hash ({node}); ARGV: sku, value, mode
-- Returns {1, on_hand, reserved}, or {-1} when the node's generation marker is missing (Redis
-- lost this node: reserved would be taken as 0 and oversell; it is rebuilt first).
if not redis.call('HGET', KEYS[3], '\0gen') then
  return {-1}
end
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local on_hand = tonumber(ARGV[2])
if ARGV[3] == 'add' then on_hand = old + on_hand end
redis.call('HSET', KEYS[1], ARGV[1], on_hand)
redis.call('HINCRBY', KEYS[3], ARGV[1], on_hand - old)
return {1, on_hand, tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')}
