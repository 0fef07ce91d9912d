-- Shops, listings and safety stock (oms/channels/shops.py, oms/api/shops.py).

-- name: shop_upsert
-- Create or replace a shop; credentials only change when given ($6 null keeps them).
insert into shops (id, channel, platform_shop_id, brand, name, credentials, api_url, share_kind, share_value,
                   serves_modes, serves_nodes, deducts_at_order, publish_stock, active, is_default)
values ($1, $2, $3, $4, $5, coalesce($6::jsonb, '{}'), $7, $8, $9, $10, $11, $12, $13, $14, false)
on conflict (id) do update set
    channel = excluded.channel, platform_shop_id = excluded.platform_shop_id, brand = excluded.brand,
    name = excluded.name, credentials = coalesce($6::jsonb, shops.credentials), api_url = excluded.api_url,
    share_kind = excluded.share_kind, share_value = excluded.share_value, serves_modes = excluded.serves_modes,
    serves_nodes = excluded.serves_nodes, deducts_at_order = excluded.deducts_at_order,
    publish_stock = excluded.publish_stock, active = excluded.active, updated_at = now()
returning (xmax = 0) as created;

-- name: shop_ensure_default
-- The default shop of a configured channel (its credentials stay in the OMS_* variables).
insert into shops (id, channel, name, is_default, publish_stock)
values ($1, $1, $1 || ' (default shop)', true, $2)
on conflict do nothing;

-- name: shop_get
select * from shops where id = $1;

-- name: shop_deducts_at_order
-- Whether an unpaid order of this shop holds its units (primary key look-up).
select deducts_at_order from shops where id = $1 and active;

-- name: shops_all
select * from shops order by id;

-- name: shop_by_app_key
-- The shop a push is signed for (index shops_by_app_key).
select * from shops where channel = $1 and app_key = $2 and active limit 1;

-- name: shop_default
select * from shops where channel = $1 and is_default;

-- name: listing_put
insert into listings (shop_id, sku, platform_item_id, platform_sku_id, platform_store_id, active)
values ($1, $2, $3, $4, $5, $6)
on conflict (shop_id, sku) do update set
    platform_item_id = excluded.platform_item_id, platform_sku_id = excluded.platform_sku_id,
    platform_store_id = excluded.platform_store_id, active = excluded.active, updated_at = now();

-- name: listings_of_shop
select * from listings where shop_id = $1 order by sku;

-- name: listings_for
-- The listings of one shop for some SKUs (the dispatcher's batch).
select * from listings where shop_id = $1 and sku = any($2::text[]) and active;

-- name: sku_map_with_listings
-- Platform SKU id -> our SKU for a channel: the sku_map table, then every shop's listings.
select platform_sku_id, sku from sku_map where channel = $1
union all
select l.platform_sku_id, l.sku from listings l join shops s on s.id = l.shop_id where s.channel = $1;

-- name: safety_put
insert into safety_stock (node_id, sku, units) values ($1, $2, $3)
on conflict (coalesce(node_id, ''), coalesce(sku, '')) do update set units = excluded.units, updated_at = now();

-- name: safety_delete
delete from safety_stock where coalesce(node_id, '') = coalesce($1, '') and coalesce(sku, '') = coalesce($2, '');

-- name: safety_for_skus
-- Every rule that can apply to these SKUs (node-wide ones included; index safety_stock_by_sku).
select node_id, sku, units from safety_stock where sku = any($1::text[]) or sku is null;

-- name: safety_all
select node_id, sku, units from safety_stock order by node_id nulls first, sku nulls first;

-- name: listing_by_platform_sku
select sku from listings where shop_id = $1 and platform_sku_id = $2;

-- name: listing_get
select * from listings where shop_id = $1 and sku = $2;

-- name: stock_sync_get
select last_sent, acked_at, status from stock_sync where shop_id = $1 and sku = $2;
