-- Store operations: store tokens (only a hash is kept), pick / hand-over timestamps on
-- fulfilments, pickup-code uniqueness among a store's open pickups, and the indexes the
-- pick list, code look-up and pickup expiry run on.

create table store_tokens (
    id          text primary key,
    node_id     text not null references nodes (id),
    -- sha256 (hex) of the bearer token; the token itself is shown once, at issue
    token_hash  text not null unique,
    label       text not null default '',
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz
);
create index store_tokens_by_node on store_tokens (node_id, created_at);

alter table fulfillments add column if not exists picked_at timestamptz;       -- picked / code issued
alter table fulfillments add column if not exists handed_over_at timestamptz;  -- shipped / collected
alter table fulfillments add column if not exists reason text;                 -- why it was rejected

-- a pickup code is unique among the open (ready) pickups of one store
create unique index fulfillments_open_pickup_code on fulfillments (node_id, pickup_code)
    where status = 'ready_for_pickup';
-- look-up of any code at a store (used codes answer 409, not 404)
create index fulfillments_pickup_code on fulfillments (node_id, pickup_code)
    where pickup_code is not null;
-- uncollected pickups by age, for expiry
create index fulfillments_ready_since on fulfillments (picked_at)
    where status = 'ready_for_pickup';
-- pickup orders by their store, for goods transferred in from other nodes
create index orders_by_pickup_node on orders (pickup_node_id, status) where pickup_node_id is not null;
