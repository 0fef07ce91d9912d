-- The transactional outbox and the dispatcher's state (issues 13 §3 and 14).
--
-- outbox       what a platform must hear about, written in the transaction of the change:
--                stock     availability of `sku` changed (triggers below: every write to
--                          `stock` or `reservations` -- set, reservation, release, commit --
--                          adds one row per SKU it touched, in the same transaction)
--                resync    publish every listing of `shop_id` again (admin call, schedule)
--                handover  a fulfilment was shipped/collected: confirm it to the platform
--                cancel    an order we cancelled: confirm it, or list it for ops
--              stock/resync rows are folded into `stock_sync` and deleted; handover/cancel rows
--              are the messages themselves (status, attempts, lease, the platform's last error).
-- stock_sync   one row per (shop, SKU): coalesces every change, so only the newest full value
--              goes out; the dispatcher leases rows (two dispatchers never send one at once).
-- sync_log     change -> platform acknowledged, per channel (the lag percentiles on /ops).

create table outbox (
    id              bigserial primary key,
    kind            text not null check (kind in ('stock', 'resync', 'handover', 'cancel')),
    sku             text,
    shop_id         text,
    order_id        text,
    fulfillment_id  text,
    payload         jsonb,
    status          text not null default 'pending'
                    check (status in ('pending', 'done', 'dead', 'blocked', 'manual')),
    attempts        integer not null default 0,
    next_at         timestamptz not null default now(),
    lease_until     timestamptz,
    lease_owner     text,
    last_code       text,
    last_error      text,
    created_at      timestamptz not null default now(),
    done_at         timestamptz
);
create index outbox_due on outbox (kind, next_at) where status = 'pending';
create index outbox_stuck on outbox (status, created_at) where status in ('dead', 'blocked', 'manual');
create index outbox_by_order on outbox (order_id) where order_id is not null;

create table stock_sync (
    shop_id         text not null references shops (id) on delete cascade,
    sku             text not null,
    dirty           boolean not null default true,
    -- oldest change not yet sent; while a send is in flight, the one it covers
    changed_at      timestamptz,
    inflight_since  timestamptz,
    status          text not null default 'ok' check (status in ('ok', 'dead')),
    attempts        integer not null default 0,
    next_at         timestamptz not null default now(),
    lease_until     timestamptz,
    lease_owner     text,
    -- one per send: the idempotency key / request reference of the call
    seq             bigint not null default 0,
    last_sent       integer,
    acked_at        timestamptz,
    last_code       text,
    last_error      text,
    primary key (shop_id, sku)
);
create index stock_sync_due on stock_sync (next_at) where status = 'ok' and (dirty or lease_until is not null);
create index stock_sync_dead on stock_sync (shop_id) where status = 'dead';

create table sync_log (
    at       timestamptz not null default now(),
    channel  text not null,
    kind     text not null,   -- stock | handover
    lag_ms   integer not null
);
create index sync_log_at on sync_log (at);

alter table shops add column if not exists sync_paused_until timestamptz;  -- rate-limited until
alter table shops add column if not exists last_full_resync_at timestamptz;

-- One outbox row per SKU a statement touched (transition tables: one insert per statement, so
-- the group-commit batch of hundreds of orders adds one row per distinct SKU, not per line).
create function outbox_stock_changed() returns trigger language plpgsql as $$
begin
    insert into outbox (kind, sku) select distinct 'stock', sku from changed_rows;
    if found then
        perform pg_notify('oms_outbox', '');
    end if;
    return null;
end $$;

create trigger stock_inserted after insert on stock
    referencing new table as changed_rows for each statement execute function outbox_stock_changed();
create trigger stock_updated after update on stock
    referencing new table as changed_rows for each statement execute function outbox_stock_changed();
create trigger reservations_inserted after insert on reservations
    referencing new table as changed_rows for each statement execute function outbox_stock_changed();
create trigger reservations_updated after update on reservations
    referencing new table as changed_rows for each statement execute function outbox_stock_changed();
