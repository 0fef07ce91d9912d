-- name: orders_write_batch
-- One statement, one round trip, one implicit transaction for a whole batch of new orders:
-- orders that already exist for (channel, external_id) are skipped together with their children.
-- The key goes in first (order_keys holds that uniqueness across the monthly partitions of
-- `orders`, 022_order_partitions.sql); an order is written only for a key that went in.
-- $1 is one JSON array of five arrays of rows (each row an array of column values, in the column
-- order below): orders, lines, fulfilments, reservations, history. JSON because encoding a
-- batch as one document costs the client far less than 45 typed arrays element by element;
-- jsonb so PostgreSQL parses it once, not once per field read. The reservations' insert adds
-- the outbox rows of the SKUs it touched (one per SKU per batch) through its statement trigger
-- (014_outbox.sql), in this same transaction.
with batch as (
    select $1::text::jsonb as b
), new_keys as (
    insert into order_keys (id, channel, external_id)
    select r->>0, r->>1, r->>2
      from batch, jsonb_array_elements(b->0) r
    on conflict (channel, external_id) do nothing
    returning id
), new_orders as (
    insert into orders (id, channel, external_id, status, channel_status, delivery_mode, buyer,
                        dest_lat, dest_lng, dest_address, dest_approximate, pickup_node_id,
                        promised_by, paid_at, total_fen, freight_fen, discount_fen, reason,
                        channel_updated_at, shop_id, pay_by)
    select r->>0, r->>1, r->>2, r->>3, r->>4, r->>5, (r->6)::jsonb,
           (r->>7)::float8, (r->>8)::float8, r->>9, (r->>10)::bool, r->>11,
           (r->>12)::timestamptz, (r->>13)::timestamptz, (r->>14)::bigint,
           (r->>15)::bigint, (r->>16)::bigint, r->>17, (r->>18)::timestamptz, r->>19, (r->>20)::timestamptz
      from batch, jsonb_array_elements(b->0) r
     where r->>0 in (select id from new_keys)
    returning id
), new_lines as (
    insert into order_lines (order_id, line_no, sku, quantity, unit_price_fen, platform_line_id,
                             platform_sku_id, status, reason)
    select r->>0, (r->>1)::int, r->>2, (r->>3)::int, (r->>4)::bigint, r->>5, r->>6, r->>7, r->>8
      from batch, jsonb_array_elements(b->1) r
     where r->>0 in (select id from new_orders)
), new_fulfillments as (
    insert into fulfillments (id, order_id, node_id, status, role, distance_m, ready_by)
    select r->>0, r->>1, r->>2, r->>3, r->>4, (r->>5)::float8, (r->>6)::timestamptz
      from batch, jsonb_array_elements(b->2) r
     where r->>1 in (select id from new_orders)
    returning id
), new_reservations as (
    insert into reservations (fulfillment_id, sku, order_id, node_id, quantity, state)
    select r->>0, r->>1, r->>2, r->>3, (r->>4)::int, 'reserved'
      from batch, jsonb_array_elements(b->3) r
     where r->>0 in (select id from new_fulfillments)
), new_history as (
    insert into order_history (order_id, from_status, to_status, cause, detail)
    select r->>0, r->>1, r->>2, r->>3, (r->4)::jsonb
      from batch, jsonb_array_elements(b->4) r
     where r->>0 in (select id from new_orders)
)
select id from new_orders;

-- name: fulfillments_insert_many
insert into fulfillments (id, order_id, node_id, status, role, distance_m, ready_by)
select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[],
                     $7::timestamptz[]);

-- name: reservations_insert_many
insert into reservations (fulfillment_id, sku, order_id, node_id, quantity, state)
select f, s, o, n, q, 'reserved'
  from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[]) as t(f, s, o, n, q);

-- name: history_insert
insert into order_history (order_id, from_status, to_status, cause, detail)
values ($1, $2, $3, $4, $5);

-- name: order_by_id
-- By id alone: the primary key (id, created_at) of every month is probed, none pruned
-- (022_order_partitions.sql weighs the alternatives, measured).
select * from orders where id = $1;

-- name: order_by_id_for_update
-- Locks the order row: every status change of one order is serialized here.
select * from orders where id = $1 for update;

-- name: order_exists
-- (order_keys: one index, where `orders` would probe every month's)
select exists (select 1 from order_keys where id = $1);

-- name: order_id_by_external
select id from order_keys where channel = $1 and external_id = $2;

-- name: order_set_status
update orders set status = $2, reason = coalesce($3, reason), updated_at = now() where id = $1;

-- name: order_set_channel_status
update orders set channel_status = $2, channel_updated_at = coalesce($3, channel_updated_at),
                  updated_at = now()
 where id = $1;

-- name: order_lines_by_order
select line_no, sku, quantity, unit_price_fen, platform_line_id, platform_sku_id, status, reason, cancelled_qty
  from order_lines where order_id = $1 order by line_no;

-- name: order_line_cancel_units
-- $3 more units of a line cancelled (never more than it has), with the reason.
update order_lines set cancelled_qty = least(quantity, cancelled_qty + $3), reason = coalesce($4, reason)
 where order_id = $1 and line_no = $2;

-- name: order_line_set_status
update order_lines set status = $3, reason = $4 where order_id = $1 and line_no = $2;

-- name: fulfillments_by_order
select id, node_id, status, role, distance_m, pickup_code, ready_by
  from fulfillments where order_id = $1 order by created_at, id;

-- name: reservations_by_order
select fulfillment_id, sku, node_id, quantity, state from reservations where order_id = $1;

-- name: reservations_set_state
-- Close the open reservations of one fulfilment (released or committed).
update reservations set state = $2, updated_at = now()
 where fulfillment_id = $1 and state = 'reserved'
returning sku, quantity, node_id;

-- name: fulfillment_set_status
update fulfillments set status = $2, updated_at = now() where id = $1;

-- name: fulfillments_confirm_held
-- An unpaid order was paid: its held units become the stores' work, allocated as of now (index
-- fulfillments_by_order). The reservations stay as they are: the units were reserved at the hold.
update fulfillments set status = 'allocated', created_at = now(), updated_at = now()
 where order_id = $1 and status = 'held'
returning id, node_id;

-- name: history_by_order
select at, from_status, to_status, cause, detail from order_history where order_id = $1 order by id;

-- name: orders_list
-- Filters are optional (null = any); newest first; keyset pagination on (created_at, id).
select * from orders
 where ($1::text is null or channel = $1)
   and ($2::text is null or external_id = $2)
   and ($3::text is null or status = $3)
   and ($4::timestamptz is null or (created_at, id) < ($4, $5))
 order by created_at desc, id desc
 limit $6;

-- name: orders_list_by_external
-- The same page for one external id: order_keys (unique (external_id, channel), one index) names
-- the few orders it can be, whichever month holds them; orders has no index on external_id.
select o.* from order_keys k join orders o on o.id = k.id
 where k.external_id = $2
   and ($1::text is null or k.channel = $1)
   and ($3::text is null or o.status = $3)
   and ($4::timestamptz is null or (o.created_at, o.id) < ($4, $5))
 order by o.created_at desc, o.id desc
 limit $6;

-- name: order_clear_reason
-- An order that got its stock no longer carries the reason it was waiting.
update orders set reason = null, updated_at = now() where id = $1;

-- name: backordered_orders_with_sku
-- Orders waiting for this SKU, wholly (backordered) or in part (partially_allocated), oldest
-- first (index orders_by_status).
select o.id from orders o
 where o.status in ('backordered', 'partially_allocated')
   and exists (select 1 from order_lines l where l.order_id = o.id and l.sku = $1 and l.status = 'backordered')
 order by o.created_at, o.id
 limit $2;

-- name: reservation_reduce
-- Take $3 units of one SKU out of an open reservation (a refunded line, a rejected unit); all of
-- them closes the row as released. Nothing comes back when the row is no longer open.
update reservations
   set state = case when quantity = $3 then 'released' else state end,
       quantity = case when quantity = $3 then quantity else quantity - $3 end,
       updated_at = now()
 where fulfillment_id = $1 and sku = $2 and state = 'reserved' and quantity >= $3
returning sku;

-- name: order_lines_cancel_all
-- A whole-order cancel: every unit of every line cancelled, with the reason.
update order_lines set cancelled_qty = quantity, status = 'cancelled', reason = coalesce($2, reason)
 where order_id = $1 and status <> 'cancelled';

-- name: orders_unpaid_expired
-- Unpaid orders whose hold ran out before $1: the platform's own expiry, else created_at + $2
-- minutes (index orders_unpaid).
select id, coalesce(pay_by, created_at + make_interval(mins => $2)) as pay_by from orders
 where status = 'created' and coalesce(pay_by, created_at + make_interval(mins => $2)) < $1
 order by created_at
 limit $3;

-- name: orders_promise_due
-- One-hour orders still in our hands, not yet escalated, whose promise falls before $1
-- (index orders_open_promise).
select id, status, delivery_mode, promised_by from orders
 where promised_by is not null and escalated_at is null and promised_by < $1
   and status in ('allocated', 'partially_allocated', 'picking', 'picked')
 order by promised_by
 limit $2;

-- name: order_escalate
-- Mark an order escalated once; nothing when it already was.
update orders set escalated_at = $2 where id = $1 and escalated_at is null returning id;

-- name: orders_existing
-- Which of these order ids are stored: reading back writes whose outcome is in doubt (an order
-- and its key are written together, 022_order_partitions.sql).
select id from order_keys where id = any($1::text[]);

-- name: partitions_ensure
-- The next months of orders and order_history ready before rows arrive (run at start-up;
-- idempotent). Three months ahead, not more: every empty partition adds to each lookup by id
-- (022_order_partitions.sql); a process left running longer sends rows to the default
-- partition, and the next start-up moves them into their month.
select oms_partitions(3);
