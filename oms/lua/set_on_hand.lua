-- Set (ARGV[3] == 'set') or adjust (ARGV[3] == 'add') on-hand for one SKU, leaving reserved as it is.
-- KEYS[1] on-hand hash, KEYS[2] reserved hash ({node}); ARGV: sku, value
-- Returns {on_hand, reserved}.
local on_hand
if ARGV[3] == 'add' then
  on_hand = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  on_hand = tonumber(ARGV[2])
end
return {on_hand, tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')}
