-- The order lifecycle through a real day (issue 12): partial cancels by units, the steps after
-- hand-over, unpaid holds that expire, and the one timer job's indexes.

-- units of a line cancelled (a partial cancel or refund); the line is 'cancelled' once all are
alter table order_lines add column if not exists cancelled_qty integer not null default 0
    check (cancelled_qty >= 0);

-- an unpaid order is cancelled after this (the platform's own expiry; else created_at + a setting)
alter table orders add column if not exists pay_by timestamptz;
-- when the timer job escalated a one-hour order at risk (once)
alter table orders add column if not exists escalated_at timestamptz;

alter table fulfillments add column if not exists received_at timestamptz;   -- transfer arrived
alter table fulfillments add column if not exists delivered_at timestamptz;  -- at the buyer's door

-- the timer job: unpaid holds by age, and open one-hour orders by promise not yet escalated
create index if not exists orders_unpaid on orders (created_at) where status = 'created';
create index if not exists orders_open_promise on orders (promised_by)
    where promised_by is not null and escalated_at is null
      and status in ('allocated', 'partially_allocated', 'picking', 'picked');
