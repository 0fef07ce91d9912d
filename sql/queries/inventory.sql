-- name: stock_all
-- Every on-hand figure, for rebuilding Redis.
select node_id, sku, on_hand from stock;

-- name: reservations_open
-- Open reservations (index reservations_open), for rebuilding Redis.
select node_id, sku, fulfillment_id, quantity from reservations where state = 'reserved';

-- name: stock_set
-- Set on-hand for one (node, SKU); returns the new value.
insert into stock (node_id, sku, on_hand, updated_at) values ($1, $2, $3, now())
on conflict (node_id, sku) do update set on_hand = excluded.on_hand, updated_at = now()
returning on_hand;

-- name: stock_add
-- Move on-hand by a delta (hand-over commits: negative), never below zero.
update stock set on_hand = greatest(on_hand + $3, 0), updated_at = now()
 where node_id = $1 and sku = $2;

-- name: stock_set_many
-- Bulk set on-hand (seeding): arrays of node ids, SKUs and values.
insert into stock (node_id, sku, on_hand)
select * from unnest($1::text[], $2::text[], $3::int[])
on conflict (node_id, sku) do update set on_hand = excluded.on_hand, updated_at = now();

-- name: stock_of_nodes
-- On-hand of some nodes (primary key (node_id, sku)), for rebuilding them in Redis.
select node_id, sku, on_hand from stock where node_id = any($1::text[]);

-- name: reservations_open_of_nodes
-- Open reservations at some nodes (index reservations_open), for rebuilding them in Redis.
select node_id, sku, fulfillment_id, quantity from reservations
 where state = 'reserved' and node_id = any($1::text[]);

-- name: reservations_by_fulfillments
-- Every reservation row of some fulfilments, whatever its state (primary key), for the reconciler.
select fulfillment_id, node_id, sku, quantity, state from reservations
 where fulfillment_id = any($1::text[]);

-- name: node_stock_buckets
-- Stock buckets of some nodes (primary key), or of every node when $1 is null, for installing them in Redis.
select id, stock_buckets from nodes where $1::text[] is null or id = any($1::text[]);

-- name: reservations_open_since
-- Open reservations at some nodes made since a moment: fulfilment ids carry their time, so the
-- ids from $2 (a cut-off id) up to $3 (the next prefix) are a range of the primary key, read
-- in proportion to the reservations made since, not to all that are open. For the reconciler's fast pass.
select node_id, fulfillment_id, sku, quantity from reservations
 where fulfillment_id >= $2 and fulfillment_id < $3 and state = 'reserved' and node_id = any($1::text[]);
