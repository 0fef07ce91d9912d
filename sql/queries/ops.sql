-- Queries behind the ops dashboard (/ops/summary) and the scrape-time gauges of /metrics.
-- "Open picks" are fulfilments a node still has to pick or hand over: status allocated or picked.

-- name: ops_channel_totals
-- Orders created since $1, per channel. GMV counts paid orders that are not cancelled.
select channel,
       count(*)::bigint as orders,
       coalesce(sum(total_fen) filter (where paid_at is not null and status <> 'cancelled'), 0)::bigint as gmv_fen,
       count(*) filter (where status not in ('created', 'backordered', 'cancelled'))::bigint as accepted,
       count(*) filter (where status = 'backordered')::bigint as backordered,
       count(*) filter (where status = 'cancelled')::bigint as cancelled
  from orders
 where created_at >= $1
 group by channel
 order by channel;

-- name: ops_orders_per_minute
-- Orders and GMV per channel per minute since $1 (index orders_by_created).
select channel,
       date_trunc('minute', created_at) as minute,
       count(*)::bigint as orders,
       coalesce(sum(total_fen) filter (where paid_at is not null and status <> 'cancelled'), 0)::bigint as gmv_fen
  from orders
 where created_at >= $1
 group by channel, date_trunc('minute', created_at);

-- name: ops_backordered_count
-- Orders waiting in backorder now (index orders_by_status).
select count(*)::bigint from orders where status = 'backordered';

-- name: ops_backorder_reasons
-- Why orders are waiting in backorder now, most common first. Reasons are grouped by kind: the
-- text before the first ': ' (what follows lists SKUs or nodes), without asides in brackets or the
-- nodes after "stock moved at", with quoted names and numbers blanked; `example` is the latest
-- full reason of the group.
with b as (
    select regexp_replace(regexp_replace(regexp_replace(regexp_replace(
               split_part(coalesce(reason, 'no reason recorded'), ': ', 1),
               '\s*\([^)]*\)', '', 'g'),
               'stock moved at [^;]*?(while|;|$)', 'stock moved \1', 'g'),
               '''[^'']*''', '''…''', 'g'),
               '-?\d+(\.\d+)?', 'N', 'g') as kind,
           reason, created_at
      from orders
     where status = 'backordered'
)
select kind as reason, count(*)::bigint as orders,
       (array_agg(reason order by created_at desc))[1] as example
  from b
 group by kind
 order by orders desc, kind
 limit $1;

-- name: ops_backorders_recent
select id, channel, external_id, reason, created_at
  from orders
 where status = 'backordered'
 order by created_at desc, id desc
 limit $1;

-- name: ops_top_out_of_stock
-- Known SKUs whose order lines were backordered since $1, by units short.
select l.sku, s.name, count(*)::bigint as lines, sum(l.quantity)::bigint as units,
       count(distinct l.order_id)::bigint as orders, max(o.created_at) as latest,
       (array_agg(l.reason order by o.created_at desc))[1] as example
  from order_lines l
  join orders o on o.id = l.order_id
  join skus s on s.sku = l.sku
 where l.status = 'backordered' and o.created_at >= $1
 group by l.sku, s.name
 order by units desc, latest desc
 limit $2;

-- name: ops_orders_brief
-- What the at-risk list shows of each order (the clock's inputs come from promise.sql).
select id, channel, external_id, delivery_mode from orders where id = any($1::text[]);

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
