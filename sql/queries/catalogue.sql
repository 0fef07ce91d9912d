-- name: node_upsert
insert into nodes (id, kind, name, lat, lng, h3_cell, capabilities, delivery_radius_m,
                   capacity_per_hour, city, active, updated_at)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())
on conflict (id) do update set
    kind = excluded.kind, name = excluded.name, lat = excluded.lat, lng = excluded.lng,
    h3_cell = excluded.h3_cell, capabilities = excluded.capabilities,
    delivery_radius_m = excluded.delivery_radius_m, capacity_per_hour = excluded.capacity_per_hour,
    city = excluded.city, active = excluded.active, updated_at = now()
returning (xmax = 0) as created;

-- name: node_stock_buckets_for_update
-- A node's number of stock buckets, its row locked until the caller's transaction ends (read
-- apart from the update: in one statement, a generic plan may run the update first and the
-- locking read then skips the row it changed, which read as "no count before")
select stock_buckets from nodes where id = $1 for update;

-- name: node_stock_buckets_set
update nodes set stock_buckets = $2 where id = $1;

-- name: nodes_all
select id, kind, name, lat, lng, h3_cell, capabilities, delivery_radius_m, capacity_per_hour, city, active,
       stock_buckets
  from nodes order by id;

-- name: node_get
select id, kind, name, lat, lng, h3_cell, capabilities, delivery_radius_m, capacity_per_hour, city, active,
       stock_buckets
  from nodes where id = $1;

-- name: node_ids
select id from nodes order by id;

-- name: sku_upsert_many
-- Bulk upsert of the catalogue: arrays of codes, names and prices.
insert into skus (sku, name, unit_price_fen)
select * from unnest($1::text[], $2::text[], $3::bigint[])
on conflict (sku) do update set name = excluded.name, unit_price_fen = excluded.unit_price_fen;

-- name: skus_known
-- Which of these SKU codes exist.
select sku from skus where sku = any($1::text[]);

-- name: sku_count
select count(*) from skus;

-- name: sku_map_put
insert into sku_map (channel, platform_sku_id, sku) values ($1, $2, $3)
on conflict (channel, platform_sku_id) do update set sku = excluded.sku;

-- name: sku_map_for_channel
select platform_sku_id, sku from sku_map where channel = $1;

-- name: open_picks_per_node
-- Fulfilments waiting at each node (index fulfillments_by_node_status): the routing load penalty.
select node_id, count(*)::int as n from fulfillments
 where status in ('allocated', 'picked') group by node_id;

-- name: skus_page
-- One page of the catalogue in code order, codes starting with $1, after code $2 (primary key).
select sku, name, unit_price_fen from skus
 where sku > $2 and starts_with(sku, $1)
 order by sku
 limit $3;
