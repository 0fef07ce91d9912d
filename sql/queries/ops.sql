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
       count(distinct l.order_id)::bigint as orders, max(o.created_at) as latest
  from order_lines l
  join orders o on o.id = l.order_id
  join skus s on s.sku = l.sku
 where l.status = 'backordered' and o.created_at >= $1
 group by l.sku, s.name
 order by units desc, latest desc
 limit $2;

-- name: ops_store_load
-- Open picks and at-risk orders per node.
-- $1 now, $2 courier minutes, $3 minutes to pick one order, $4 picks per hour of a node with
-- no capacity set. An allocated fulfilment waits for the ones allocated before it at its node
-- (queue position x 60 / capacity minutes) and then takes $3 to pick; a picked one waits only
-- for the courier. At risk: promised_by - now < courier + picking estimate.
with open_f as (
    select f.node_id, f.status, f.order_id,
           case when f.status = 'allocated'
                then (row_number() over (partition by f.node_id, f.status order by f.created_at, f.id)) - 1
                else 0 end as ahead
      from fulfillments f
     where f.status in ('allocated', 'picked')
), est as (
    select q.node_id, q.status, o.promised_by,
           case when q.status = 'picked' then 0.0
                else $3::float8 + q.ahead * 60.0 / coalesce(nullif(n.capacity_per_hour, 0), $4::int) end as pick_minutes,
           extract(epoch from (o.promised_by - $1::timestamptz)) / 60.0 as minutes_left
      from open_f q
      join orders o on o.id = q.order_id
      join nodes n on n.id = q.node_id
)
select node_id,
       count(*)::bigint as open_picks,
       count(*) filter (where status = 'allocated')::bigint as to_pick,
       count(*) filter (where status = 'picked')::bigint as picked,
       count(*) filter (where promised_by is not null and minutes_left < $2::int + pick_minutes)::bigint as at_risk,
       count(*) filter (where promised_by is not null and minutes_left < 0)::bigint as late
  from est
 group by node_id;

-- name: ops_at_risk
-- The open fulfilments at risk of missing their promise, least time left first
-- (same estimate and parameters as ops_store_load; $5 = how many).
with open_f as (
    select f.id, f.node_id, f.status, f.order_id,
           case when f.status = 'allocated'
                then (row_number() over (partition by f.node_id, f.status order by f.created_at, f.id)) - 1
                else 0 end as ahead
      from fulfillments f
     where f.status in ('allocated', 'picked')
), est as (
    select q.id as fulfillment_id, q.node_id, q.status, q.order_id, o.channel, o.external_id,
           o.delivery_mode, o.promised_by, n.name as node_name,
           case when q.status = 'picked' then 0.0
                else $3::float8 + q.ahead * 60.0 / coalesce(nullif(n.capacity_per_hour, 0), $4::int) end as pick_minutes,
           extract(epoch from (o.promised_by - $1::timestamptz)) / 60.0 as minutes_left
      from open_f q
      join orders o on o.id = q.order_id
      join nodes n on n.id = q.node_id
     where o.promised_by is not null
)
select fulfillment_id, order_id, channel, external_id, delivery_mode, node_id, node_name, status,
       promised_by, minutes_left::float8 as minutes_left, pick_minutes::float8 as pick_minutes
  from est
 where minutes_left < $2::int + pick_minutes
 order by minutes_left, order_id
 limit $5;

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
