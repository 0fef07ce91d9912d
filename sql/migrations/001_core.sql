-- Core schema: nodes, catalogue, stock, orders and their fulfilments, reservations,
-- the channel inbox and the order history. PostgreSQL is the system of record;
-- Redis availability is derived from `stock` and `reservations` (see oms/inventory.py).

create table nodes (
    id                 text primary key,
    kind               text not null check (kind in ('store', 'warehouse')),
    name               text not null,
    lat                double precision not null check (lat between -90 and 90),
    lng                double precision not null check (lng between -180 and 180),
    h3_cell            text not null,
    capabilities       text[] not null default '{}',
    delivery_radius_m  integer not null default 0 check (delivery_radius_m >= 0),
    capacity_per_hour  integer not null default 0 check (capacity_per_hour >= 0),
    city               text,
    active             boolean not null default true,
    updated_at         timestamptz not null default now()
);

create table skus (
    sku             text primary key,
    name            text not null default '',
    unit_price_fen  bigint not null default 0 check (unit_price_fen >= 0),
    created_at      timestamptz not null default now()
);

-- on-hand per node and SKU; reserved units are the open rows of `reservations`
create table stock (
    node_id     text not null references nodes (id),
    sku         text not null references skus (sku),
    on_hand     integer not null check (on_hand >= 0),
    updated_at  timestamptz not null default now(),
    primary key (node_id, sku)
);
create index stock_by_sku on stock (sku);

create table orders (
    id                  text primary key,
    channel             text not null,
    external_id         text not null,
    status              text not null,
    channel_status      text not null,
    delivery_mode       text not null check (delivery_mode in ('delivery', 'pickup', 'ship')),
    buyer               jsonb not null default '{}',
    dest_lat            double precision not null,
    dest_lng            double precision not null,
    dest_address        text not null default '',
    dest_approximate    boolean not null default false,
    pickup_node_id      text,
    promised_by         timestamptz,
    paid_at             timestamptz,
    total_fen           bigint not null default 0,
    freight_fen         bigint not null default 0,
    discount_fen        bigint not null default 0,
    reason              text,
    channel_updated_at  timestamptz,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    unique (channel, external_id)
);
create index orders_by_status on orders (status, created_at);
create index orders_by_created on orders (created_at);

create table order_lines (
    order_id          text not null references orders (id) on delete cascade,
    line_no           integer not null,
    sku               text not null,
    quantity          integer not null check (quantity > 0),
    unit_price_fen    bigint not null default 0,
    platform_line_id  text,
    platform_sku_id   text,
    status            text not null default 'open' check (status in ('open', 'backordered', 'cancelled')),
    reason            text,
    primary key (order_id, line_no)
);

-- the part of an order one node serves
create table fulfillments (
    id            text primary key,
    order_id      text not null references orders (id) on delete cascade,
    node_id       text not null references nodes (id),
    status        text not null,
    role          text not null default 'serve' check (role in ('serve', 'transfer')),
    distance_m    double precision,
    pickup_code   text,
    ready_by      timestamptz,
    created_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now()
);
create index fulfillments_by_order on fulfillments (order_id);
create index fulfillments_by_node_status on fulfillments (node_id, status);

-- units held for a fulfilment at its node: reserved -> committed (handed over) or released
create table reservations (
    fulfillment_id  text not null references fulfillments (id) on delete cascade,
    sku             text not null,
    order_id        text not null,
    node_id         text not null,
    quantity        integer not null check (quantity > 0),
    state           text not null check (state in ('reserved', 'committed', 'released')),
    updated_at      timestamptz not null default now(),
    primary key (fulfillment_id, sku)
);
create index reservations_open on reservations (node_id, sku) where state = 'reserved';
create index reservations_by_order on reservations (order_id);

-- raw channel events, stored once per channel message id
create table inbox (
    channel       text not null,
    message_id    text not null,
    topic         text not null default '',
    external_id   text,
    raw           bytea not null,
    status        text not null default 'received' check (status in ('received', 'processed', 'failed')),
    error         text,
    received_at   timestamptz not null default now(),
    processed_at  timestamptz,
    primary key (channel, message_id)
);
create index inbox_by_external on inbox (channel, external_id);

-- every status change of an order, with its cause
create table order_history (
    id           bigserial primary key,
    order_id     text not null references orders (id) on delete cascade,
    at           timestamptz not null default now(),
    from_status  text,
    to_status    text not null,
    cause        text not null,
    detail       jsonb
);
create index order_history_by_order on order_history (order_id, id);

-- platform SKU ids that carry no merchant code
create table sku_map (
    channel          text not null,
    platform_sku_id  text not null,
    sku              text not null references skus (sku),
    primary key (channel, platform_sku_id)
);

-- polling workers' progress (JD), so a restart neither misses nor repeats
create table channel_watermarks (
    channel     text primary key,
    value       text not null,
    updated_at  timestamptz not null default now()
);
