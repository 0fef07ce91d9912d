-- Queries behind the ops dashboard (/ops/summary) and the scrape-time gauges of /metrics.
-- "Open picks" are fulfilments a node still has to pick or hand over: status allocated or picked.

-- name: ops_fold
-- Adds the rows the triggers appended into the folded rollups (017_ops_rollups.sql).
select ops_fold();

-- name: ops_channel_totals
-- Orders created since $1, per channel: the rollup's minutes from $2 (the first whole minute at
-- or after $1) and the orders of the part minute before it (index orders_by_created).
with counted as (
    select channel, orders, gmv_fen, accepted, backordered, cancelled
      from ops_minute
     where minute >= $2
     union all
    select channel, 1, ops_gmv(status, paid_at, total_fen), ops_accepted(status)::int,
           (status = 'backordered')::int, (status = 'cancelled')::int
      from orders
     where created_at >= $1 and created_at < $2
)
select channel, sum(orders)::bigint as orders, sum(gmv_fen)::bigint as gmv_fen, sum(accepted)::bigint as accepted,
       sum(backordered)::bigint as backordered, sum(cancelled)::bigint as cancelled
  from counted
 group by channel
having sum(orders) <> 0
 order by channel;

-- name: ops_orders_per_minute
-- Orders and GMV per channel per minute since $1 (a whole minute) from the rollup.
select channel, minute, sum(orders)::bigint as orders, sum(gmv_fen)::bigint as gmv_fen
  from ops_minute
 where minute >= $1
 group by channel, minute
having sum(orders) <> 0;

-- name: ops_backordered_count
-- Orders waiting in backorder now.
select coalesce(sum(orders), 0)::bigint from ops_backorder_kind;

-- name: ops_backorder_reasons
-- Why orders are waiting in backorder now, most common kind first (ops_reason_kind names the
-- kind); `example` is the latest full reason of the kind (index orders_backordered_by_kind).
with kinds as (
    select kind, sum(orders)::bigint as orders
      from ops_backorder_kind
     group by kind
    having sum(orders) > 0
     order by orders desc, kind
     limit $1
)
select k.kind as reason, k.orders,
       (select o.reason from orders o
         where o.status = 'backordered' and ops_reason_kind(o.reason) = k.kind
         order by ops_reason_kind(o.reason) desc, o.created_at desc, o.id desc
         limit 1) as example
  from kinds k
 order by k.orders desc, k.kind;

-- name: ops_backorders_recent
select id, channel, external_id, reason, created_at
  from orders
 where status = 'backordered'
 order by created_at desc, id desc
 limit $1;

-- name: ops_top_out_of_stock
-- Known SKUs whose order lines were backordered, of orders created since $1, by units short: the
-- rollup's hours from $2 (the first whole hour at or after $1) and the lines of the part hour
-- before it. `example` is the latest backordered line's reason (index order_lines_backordered).
with counted as (
    select sku, lines, units, orders, hour as latest
      from ops_hour_sku
     where hour >= $2
     union all
    select l.sku, count(*), sum(l.quantity), count(distinct l.order_id), max(o.created_at)
      from orders o
      join order_lines l on l.order_id = o.id and l.status = 'backordered'
     where o.created_at >= $1 and o.created_at < $2
     group by l.sku
), top as (
    select c.sku, s.name, sum(c.lines)::bigint as lines, sum(c.units)::bigint as units,
           sum(c.orders)::bigint as orders, max(c.latest) filter (where c.lines > 0) as latest
      from counted c
      join skus s on s.sku = c.sku
     group by c.sku, s.name
    having sum(c.lines) > 0
     order by units desc, latest desc, c.sku
     limit $3
)
select t.*,
       (select l.reason from order_lines l
         where l.sku = t.sku and l.status = 'backordered'
         order by l.order_id desc
         limit 1) as example
  from top t
 order by t.units desc, t.latest desc, t.sku;

-- name: ops_node_work
-- Open fulfilments per node (to pick, picked) from the rollup, with what its picking rate needs.
select w.node_id, sum(w.to_pick)::bigint as to_pick, sum(w.picked)::bigint as picked, n.capacity_per_hour
  from ops_node_work w
  join nodes n on n.id = w.node_id
 group by w.node_id, n.capacity_per_hour
having sum(w.to_pick) <> 0 or sum(w.picked) <> 0;

-- name: ops_promise_candidates
-- The open fulfilments that can be at risk or late: those whose order's promise falls before
-- $1 (now) + their node's horizon ($2 nodes, $3 minutes; $4 the largest, in seconds), with their
-- place in the node's picking queue (the pick list's order, as in promise.sql). A fulfilment ahead
-- of one in this set has an earlier promise, so it is in the set too and `ahead` counts exactly;
-- the rule itself is Python's (oms/network/promise.py). Index orders_open_by_promise bounds the
-- read to the open orders due within the horizon.
select f.id as fulfillment_id, f.node_id, f.status, f.order_id, o.promised_by,
       o.channel, o.external_id, o.delivery_mode,
       case when f.status = 'allocated'
            then (row_number() over (
                      partition by f.node_id, f.status
                      order by o.promised_by, coalesce(o.paid_at, 'infinity'::timestamptz), f.created_at, f.id)) - 1
            else 0 end::int as ahead
  from orders o
  join fulfillments f on f.order_id = o.id
  join unnest($2::text[], $3::float8[]) as h(node_id, minutes) on h.node_id = f.node_id
 where o.promised_by is not null
   and o.promised_by < $1::timestamptz + make_interval(secs => $4::float8)
   and o.status in ('allocated', 'partially_allocated', 'picking', 'picked', 'ready_for_pickup')
   and f.status in ('allocated', 'picked')
   and o.promised_by < $1::timestamptz + make_interval(secs => h.minutes * 60);

-- name: ops_stock_nodes
-- The nodes that stock these SKUs at all (index stock_by_sku): where a SKU can run out.
select sku, node_id from stock where sku = any($1::text[]);

-- name: oversold_pairs
-- (node, SKU) pairs whose open reservations exceed on-hand (on-hand is what is left after
-- hand-overs, so reserved + committed > original stock means reserved > on_hand here).
-- A reservation with no stock row at all counts against an on-hand of 0.
select r.node_id, r.sku, coalesce(s.on_hand, 0)::int as on_hand, sum(r.quantity)::int as reserved
  from reservations r
  left join stock s on s.node_id = r.node_id and s.sku = r.sku
 where r.state = 'reserved'
 group by r.node_id, r.sku, s.on_hand
having sum(r.quantity) > coalesce(s.on_hand, 0)
 order by r.node_id, r.sku;
