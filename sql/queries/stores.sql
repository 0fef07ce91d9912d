-- name: store_token_insert
insert into store_tokens (id, node_id, token_hash, label) values ($1, $2, $3, $4)
returning id, node_id, label, created_at, revoked_at;

-- name: store_token_owner
-- The node a (hashed) bearer token acts for; revoked tokens count as unknown.
select node_id from store_tokens where token_hash = $1 and revoked_at is null;

-- name: store_token_revoke
-- Revoking twice keeps the first time; returns nothing for an unknown token.
update store_tokens set revoked_at = coalesce(revoked_at, now())
 where node_id = $1 and id = $2
returning id, node_id, label, created_at, revoked_at;

-- name: store_tokens_by_node
select id, node_id, label, created_at, revoked_at from store_tokens where node_id = $1 order by created_at, id;

-- name: store_fulfillments_at_node_for_update
-- An order's fulfilments at one node, open ones first (least far along first: a step and its
-- retry find the same part), then newest first; locks them.
select id, node_id, status, role, pickup_code, picked_at, handed_over_at, reason, created_at
  from fulfillments
 where order_id = $1 and node_id = $2
 order by case status when 'allocated' then 0 when 'picked' then 1 when 'ready_for_pickup' then 2 else 3 end,
          created_at desc, id desc
   for update;

-- name: store_fulfillment_advance
-- Conditional status change: only from the status the caller saw (a lost race changes nothing).
update fulfillments
   set status = $3,
       pickup_code = coalesce($4, pickup_code),
       reason = coalesce($5, reason),
       picked_at = case when $3 in ('picked', 'ready_for_pickup') then now() else picked_at end,
       handed_over_at = case when $3 in ('shipped', 'collected') then now() else handed_over_at end,
       received_at = case when $3 = 'received' then now() else received_at end,
       delivered_at = case when $3 = 'delivered' then now() else delivered_at end,
       updated_at = now()
 where id = $1 and status = $2
returning id;

-- name: store_fulfillment_touch
-- Part of it was rejected: note why, and change the pick list's fingerprint.
update fulfillments set reason = coalesce($2, reason), updated_at = now() where id = $1;

-- name: store_fulfillment_lines
-- The lines a fulfilment still holds (reserved) or handed over (committed).
select sku, quantity, state from reservations
 where fulfillment_id = $1 and state in ('reserved', 'committed') order by sku;

-- name: store_fulfillment_nodes_rejected
-- Nodes that already turned this order (or part of it) down: re-routing avoids them.
select distinct node_id from fulfillments where order_id = $1 and (status = 'rejected' or reason is not null);

-- name: store_picklist
-- The open work of one node with its lines, most urgent first (index fulfillments_by_node_status).
select f.id, f.order_id, f.status, f.role, f.created_at, f.picked_at,
       o.channel, o.external_id, o.delivery_mode, o.paid_at, o.promised_by, o.pickup_node_id,
       coalesce((select json_agg(json_build_object('sku', r.sku, 'quantity', r.quantity, 'name', k.name)
                                 order by r.sku)
                   from reservations r left join skus k on k.sku = r.sku
                  where r.fulfillment_id = f.id and r.state = 'reserved'), '[]'::json) as lines,
       -- a pickup: the goods other nodes transferred in, once received here
       case when f.role = 'serve' and o.delivery_mode = 'pickup' then
       coalesce((select json_agg(json_build_object('sku', r.sku, 'quantity', r.quantity, 'name', k.name)
                                 order by r.sku)
                   from fulfillments t join reservations r on r.fulfillment_id = t.id
                   left join skus k on k.sku = r.sku
                  where t.order_id = f.order_id and t.role = 'transfer' and t.status = 'received'
                    and r.state = 'committed'), '[]'::json) else '[]'::json end as transferred
  from fulfillments f join orders o on o.id = f.order_id
 where f.node_id = $1 and f.status in ('allocated', 'picked', 'ready_for_pickup')
 -- the picking queue's order (sql/queries/promise.sql counts places in it the same way)
 order by coalesce(o.promised_by, 'infinity'::timestamptz), coalesce(o.paid_at, 'infinity'::timestamptz),
          f.created_at, f.id;

-- name: store_picklist_fingerprint
-- Changes whenever the node's open work changes: the pick list's ETag.
select count(*)::int as n,
       coalesce(md5(string_agg(f.id || ':' || f.status || ':' || extract(epoch from f.updated_at)::text,
                               ',' order by f.id)), '') as digest,
       (select extract(epoch from n.updated_at)::text from nodes n where n.id = $1) as node_version,
       (select coalesce(md5(string_agg(t.id || ':' || t.status || ':' || extract(epoch from t.updated_at)::text,
                                       ',' order by t.id)), '')
          from orders o join fulfillments t on t.order_id = o.id
         where o.pickup_node_id = $1 and t.role = 'transfer'
           and ((o.status in ('allocated', 'partially_allocated', 'picking', 'picked')
                 and t.status in ('allocated', 'picked', 'shipped'))
                or (o.status = 'cancelled' and t.status = 'shipped'))) as incoming
  from fulfillments f
 where f.node_id = $1 and f.status in ('allocated', 'picked', 'ready_for_pickup');

-- name: store_incoming_transfers
-- Goods on their way to this pickup store from other nodes, until received here; a cancelled
-- order's goods still on the road too (received, they join the store's stock)
-- (index orders_by_pickup_node).
select t.id, t.order_id, t.node_id as from_node_id, t.status, t.created_at, t.handed_over_at,
       o.channel, o.external_id, o.paid_at, o.status as order_status,
       coalesce((select json_agg(json_build_object('sku', r.sku, 'quantity', r.quantity) order by r.sku)
                   from reservations r
                  where r.fulfillment_id = t.id and r.state in ('reserved', 'committed')), '[]'::json) as lines
  from orders o join fulfillments t on t.order_id = o.id
 where o.pickup_node_id = $1 and t.role = 'transfer'
   and ((o.status in ('allocated', 'partially_allocated', 'picking', 'picked')
         and t.status in ('allocated', 'picked', 'shipped'))
        or (o.status = 'cancelled' and t.status = 'shipped'))
 order by t.created_at, t.id;

-- name: store_pickup_by_code
-- A code at a store: the open pickup holding it first, else the latest one that used it.
select id, order_id, status from fulfillments
 where node_id = $1 and pickup_code = $2
 order by (status = 'ready_for_pickup') desc, updated_at desc
 limit 1;

-- name: store_pickups_expired
-- Orders whose pickup has waited since before $1, with those fulfilments (index fulfillments_ready_since).
select order_id, array_agg(id order by id) as ids from fulfillments
 where status = 'ready_for_pickup' and picked_at < $1 and ($2::text is null or node_id = $2)
 group by order_id
 limit $3;

-- name: store_fulfillment_by_id
select id, order_id, node_id, status, role, pickup_code, picked_at, handed_over_at, reason
  from fulfillments where id = $1;

-- name: store_transfers_for_update
-- The transfers of one order (to its pickup store), locked.
select id, order_id, node_id, status, role, pickup_code, picked_at, handed_over_at, reason
  from fulfillments where order_id = $1 and role = 'transfer' order by created_at, id for update;

-- name: store_fulfillment_by_id_for_update
select id, order_id, node_id, status, role, pickup_code, picked_at, handed_over_at, reason
  from fulfillments where id = $1 for update;

-- name: store_pickup_code_recent
-- Was this code given out at this store lately (open, or used within $3)? Such codes are not reissued,
-- so an old code never opens a new order.
select exists (select 1 from fulfillments
                where node_id = $1 and pickup_code = $2
                  and (status = 'ready_for_pickup' or updated_at > now() - $3::interval));

-- name: store_order_set_reason
-- The order's reason changes while its status does not (part of it backordered).
update orders set reason = $2, updated_at = now() where id = $1;

-- name: store_stock_zero_available
-- "Out of stock" at a node: on-hand falls to what other open reservations still hold there,
-- so nothing more is offered from it (and nothing held is oversold); returns the new on-hand.
update stock s
   set on_hand = least(s.on_hand, coalesce((select sum(r.quantity) from reservations r
                                             where r.node_id = s.node_id and r.sku = s.sku
                                               and r.state = 'reserved'), 0)),
       updated_at = now()
 where s.node_id = $1 and s.sku = $2
returning on_hand;

-- name: store_stock_get_for_update
select on_hand from stock where node_id = $1 and sku = $2 for update;

-- name: store_stock_get
select on_hand from stock where node_id = $1 and sku = $2;

-- name: store_stock_receive
-- Goods come into a node's stock (a cancelled order's transfer arriving at the pickup store):
-- on-hand up by $3, the row created when the node never held the SKU.
insert into stock (node_id, sku, on_hand) values ($1, $2, $3)
on conflict (node_id, sku) do update set on_hand = stock.on_hand + excluded.on_hand, updated_at = now()
returning on_hand;
