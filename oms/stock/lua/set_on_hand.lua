-- Set (ARGV[3] == 'set') or adjust (ARGV[3] == 'add') on-hand for one SKU; reserved stays as it
-- is and available moves by the same amount as on-hand.
-- KEYS[1] on-hand hash, KEYS[2] reserved hash, KEYS[3] available hash ({node}); ARGV: sku, value, mode
-- Returns {on_hand, reserved}.
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local on_hand = tonumber(ARGV[2])
if ARGV[3] == 'add' then on_hand = old + on_hand end
redis.call('HSET', KEYS[1], ARGV[1], on_hand)
redis.call('HINCRBY', KEYS[3], ARGV[1], on_hand - old)
return {on_hand, tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')}
