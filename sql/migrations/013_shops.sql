-- Shops (one account on one platform), what each lists, safety stock (issue 13 §1-2).
-- A shop's sellable units per SKU = the availability of the nodes serving it, minus safety
-- stock, times its share (oms/channels/sellable.py).

create table shops (
    id                  text primary key,
    channel             text not null,
    platform_shop_id    text not null default '',
    brand               text not null default '',
    name                text not null default '',
    -- write-only: never returned by the API; empty for a default shop (its OMS_* variables hold them)
    credentials         jsonb not null default '{}',
    -- the app key, out of the credentials, to find the shop a push is signed for
    app_key             text generated always as (nullif(credentials->>'app_key', '')) stored,
    -- the platform's API base URL; null: the channel's default (OMS_*_URL or the platform's own)
    api_url             text,
    share_kind          text not null default 'all' check (share_kind in ('all', 'ratio', 'quota')),
    -- ratio: a fraction of the pool in [0, 1] (floored); quota: at most this many units
    share_value         numeric not null default 0 check (share_value >= 0),
    -- delivery modes whose nodes make the pool: ship = parcel (ship-capable nodes),
    -- delivery = one-hour stores, pickup = pickup stores
    serves_modes        text[] not null default '{ship}',
    -- when set, only these nodes (e.g. the stores of a one-hour shop) make its pool
    serves_nodes        text[],
    -- the platform takes units off its own counter at order time (拍下减库存): unpaid holds
    deducts_at_order    boolean not null default false,
    -- publish stock to the platform (off for the mini-program: its backend reads our API)
    publish_stock       boolean not null default true,
    is_default          boolean not null default false,
    active              boolean not null default true,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    check (share_kind <> 'ratio' or share_value <= 1)
);
create unique index shops_one_default_per_channel on shops (channel) where is_default;
create index shops_by_app_key on shops (channel, app_key) where app_key is not null;

-- our SKU <-> the platform's item and SKU ids in one shop (the per-shop sku_map)
create table listings (
    shop_id            text not null references shops (id) on delete cascade,
    sku                text not null references skus (sku),
    platform_item_id   text not null default '',   -- Taobao num_iid, Douyin product_id, JD ware id
    platform_sku_id    text not null,
    -- store-level stock: Douyin store_id / JD storeId (optional)
    platform_store_id  text,
    active             boolean not null default true,
    updated_at         timestamptz not null default now(),
    primary key (shop_id, sku)
);
create index listings_by_sku on listings (sku) where active;
create unique index listings_by_platform_sku on listings (shop_id, platform_sku_id);

-- units held back from every shop: per SKU, per node, or per SKU at one node (most specific wins)
create table safety_stock (
    node_id     text references nodes (id) on delete cascade,
    sku         text references skus (sku) on delete cascade,
    units       integer not null check (units >= 0),
    updated_at  timestamptz not null default now(),
    check (node_id is not null or sku is not null)
);
create unique index safety_stock_scope on safety_stock (coalesce(node_id, ''), coalesce(sku, ''));
create index safety_stock_by_sku on safety_stock (sku);

-- the shop an order came through (null: before shops existed); carrier and tracking of a hand-over
alter table orders add column if not exists shop_id text;
alter table fulfillments add column if not exists carrier text;
alter table fulfillments add column if not exists tracking_no text;
