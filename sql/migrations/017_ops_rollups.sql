-- The rollups behind /ops/summary, so that its cost stays flat as a sale day's orders grow.
--
-- Kept on the write path by statement-level triggers with transition tables: one insert per
-- statement, not per row (the group-commit batch of hundreds of orders adds one row per minute and
-- channel it touched). A trigger counts every changed row -1 as it was and +1 as it is and writes
-- only what does not net to zero, so a status change moves an order between counts in the minute
-- it was created, and an update that changes nothing counted writes nothing.
--
-- Triggers append those deltas as rows of their own (folded = false) and never update a shared
-- counter: concurrent transactions neither wait for each other on a hot row nor deadlock over one.
-- ops_fold() adds the appended rows into one folded row per key; readers sum folded and appended
-- rows alike, so what they read is exact whether or not a fold has run.

lock table orders, order_lines, fulfillments in share row exclusive mode;  -- no write slips past the backfill

-- ---- what is counted, per row ------------------------------------------------------------------

-- The kind of a backorder reason: the text before the first ': ' (what follows lists SKUs or
-- nodes), without asides in brackets or the nodes after "stock moved at", with quoted names and
-- numbers blanked.
create function ops_reason_kind(reason text) returns text language sql immutable parallel safe as $$
    select regexp_replace(regexp_replace(regexp_replace(regexp_replace(
               split_part(coalesce(reason, 'no reason recorded'), ': ', 1),
               '\s*\([^)]*\)', '', 'g'),
               'stock moved at [^;]*?(while|;|$)', 'stock moved \1', 'g'),
               '''[^'']*''', '''…''', 'g'),
               '-?\d+(\.\d+)?', 'N', 'g')
$$;

-- GMV counts paid orders that are not cancelled (a backordered order was sold: it counts)
create function ops_gmv(status text, paid_at timestamptz, total_fen bigint) returns bigint
    language sql immutable parallel safe as $$
    select case when paid_at is not null and status <> 'cancelled' then total_fen else 0 end
$$;

create function ops_accepted(status text) returns boolean language sql immutable parallel safe as $$
    select status not in ('created', 'backordered', 'cancelled')
$$;

-- minutes and hours in UTC (the sale day starts at midnight +08:00, a whole hour)
create function ops_minute_of(at timestamptz) returns timestamptz language sql immutable parallel safe as $$
    select date_bin('1 minute', at, timestamptz '2000-01-01 00:00:00+00')
$$;

create function ops_hour_of(at timestamptz) returns timestamptz language sql immutable parallel safe as $$
    select date_bin('1 hour', at, timestamptz '2000-01-01 00:00:00+00')
$$;

-- ---- the rollups ------------------------------------------------------------------------------

-- Orders by the minute they were created and channel, counted by what they are now.
create table ops_minute (
    minute       timestamptz not null,
    channel      text not null,
    orders       bigint not null default 0,
    gmv_fen      bigint not null default 0,
    accepted     bigint not null default 0,
    backordered  bigint not null default 0,
    cancelled    bigint not null default 0,
    folded       boolean not null default false
);
create unique index ops_minute_key on ops_minute (minute, channel) where folded;
create index ops_minute_by_minute on ops_minute (minute);
create index ops_minute_unfolded on ops_minute (minute) where not folded;

-- Orders waiting in backorder now, by the kind of their reason (all of them, whenever created).
create table ops_backorder_kind (
    kind    text not null,
    orders  bigint not null default 0,
    folded  boolean not null default false
);
create unique index ops_backorder_kind_key on ops_backorder_kind (kind) where folded;
create index ops_backorder_kind_unfolded on ops_backorder_kind (kind) where not folded;

-- Backordered order lines by the hour their order was created and SKU; `orders` counts each
-- (order, SKU) once however many of its lines are short.
create table ops_hour_sku (
    hour    timestamptz not null,
    sku     text not null,
    lines   bigint not null default 0,
    units   bigint not null default 0,
    orders  bigint not null default 0,
    folded  boolean not null default false
);
create unique index ops_hour_sku_key on ops_hour_sku (hour, sku) where folded;
create index ops_hour_sku_by_hour on ops_hour_sku (hour);
create index ops_hour_sku_unfolded on ops_hour_sku (hour) where not folded;

-- Open fulfilments per node: to pick (allocated) and picked, waiting for the courier.
create table ops_node_work (
    node_id  text not null,
    to_pick  bigint not null default 0,
    picked   bigint not null default 0,
    folded   boolean not null default false
);
create unique index ops_node_work_key on ops_node_work (node_id) where folded;
create index ops_node_work_unfolded on ops_node_work (node_id) where not folded;

-- ---- the triggers -----------------------------------------------------------------------------

create type ops_order_fact as (sign int, created_at timestamptz, channel text, status text,
                               paid_at timestamptz, total_fen bigint, reason text);
create type ops_line_fact as (sign int, order_id text, sku text, quantity int);
create type ops_work_fact as (sign int, node_id text, status text);

create function ops_count_orders(facts ops_order_fact[]) returns void language plpgsql as $$
begin
    insert into ops_minute (minute, channel, orders, gmv_fen, accepted, backordered, cancelled)
    select ops_minute_of(f.created_at), f.channel, sum(f.sign),
           sum(f.sign * ops_gmv(f.status, f.paid_at, f.total_fen)),
           sum(case when ops_accepted(f.status) then f.sign else 0 end),
           sum(case when f.status = 'backordered' then f.sign else 0 end),
           sum(case when f.status = 'cancelled' then f.sign else 0 end)
      from unnest(facts) f
     group by 1, 2
    having (sum(f.sign), sum(f.sign * ops_gmv(f.status, f.paid_at, f.total_fen)),
            sum(case when ops_accepted(f.status) then f.sign else 0 end),
            sum(case when f.status = 'backordered' then f.sign else 0 end),
            sum(case when f.status = 'cancelled' then f.sign else 0 end)) <> (0, 0, 0, 0, 0);
    insert into ops_backorder_kind (kind, orders)
    select ops_reason_kind(f.reason), sum(f.sign)
      from unnest(facts) f
     where f.status = 'backordered'
     group by 1
    having sum(f.sign) <> 0;
end $$;

-- An (order, SKU) counts in `orders` while one of its lines is backordered: the lines left now,
-- less this statement's change, tell whether it just started or stopped counting. Lines of one
-- order change under its row lock (oms/stores/work.py, cancel, retry), so the count read here is
-- the one this statement left. Lines of an order being deleted were counted out before it went
-- (ops_order_deleted), so they find no order here and are skipped.
create function ops_count_lines(facts ops_line_fact[]) returns void language plpgsql as $$
begin
    with d as (
        select f.order_id, f.sku, sum(f.sign) as lines, sum(f.sign * f.quantity) as units
          from unnest(facts) f
         group by 1, 2
        having (sum(f.sign), sum(f.sign * f.quantity)) <> (0, 0)
    ), c as (
        select d.*, o.created_at,
               (select count(*) from order_lines l
                 where l.order_id = d.order_id and l.sku = d.sku and l.status = 'backordered') as now_lines
          from d join orders o on o.id = d.order_id
    )
    insert into ops_hour_sku (hour, sku, lines, units, orders)
    select ops_hour_of(created_at), sku, sum(lines), sum(units),
           sum((now_lines > 0)::int - (now_lines - lines > 0)::int)
      from c
     group by 1, 2;
end $$;

create function ops_count_work(facts ops_work_fact[]) returns void language plpgsql as $$
begin
    insert into ops_node_work (node_id, to_pick, picked)
    select f.node_id, sum(case when f.status = 'allocated' then f.sign else 0 end),
           sum(case when f.status = 'picked' then f.sign else 0 end)
      from unnest(facts) f
     where f.status in ('allocated', 'picked')
     group by 1
    having (sum(case when f.status = 'allocated' then f.sign else 0 end),
            sum(case when f.status = 'picked' then f.sign else 0 end)) <> (0, 0);
end $$;

-- One function per table for its three triggers; a transition table exists only for the events
-- that have it, hence the branches.
create function ops_orders_changed() returns trigger language plpgsql as $$
declare
    facts ops_order_fact[];
begin
    if TG_OP = 'INSERT' then
        facts := array(select row(1, n.created_at, n.channel, n.status, n.paid_at, n.total_fen, n.reason)::ops_order_fact
                         from new_rows n);
    elsif TG_OP = 'DELETE' then
        facts := array(select row(-1, o.created_at, o.channel, o.status, o.paid_at, o.total_fen, o.reason)::ops_order_fact
                         from old_rows o);
    else
        facts := array(select row(1, n.created_at, n.channel, n.status, n.paid_at, n.total_fen, n.reason)::ops_order_fact
                         from new_rows n
                        union all
                       select row(-1, o.created_at, o.channel, o.status, o.paid_at, o.total_fen, o.reason)::ops_order_fact
                         from old_rows o);
        -- an order moved to another hour (a correction, a backfill) takes its short lines along
        insert into ops_hour_sku (hour, sku, lines, units, orders)
        select ops_hour_of(m.created_at), l.sku, m.sign * count(*), m.sign * sum(l.quantity),
               m.sign * count(distinct l.order_id)
          from (select o.id, o.created_at, -1 as sign from old_rows o join new_rows n using (id)
                 where ops_hour_of(o.created_at) <> ops_hour_of(n.created_at)
                 union all
                select n.id, n.created_at, 1 from old_rows o join new_rows n using (id)
                 where ops_hour_of(o.created_at) <> ops_hour_of(n.created_at)) m
          join order_lines l on l.order_id = m.id and l.status = 'backordered'
         group by 1, 2, m.sign;
    end if;
    if cardinality(facts) > 0 then
        perform ops_count_orders(facts);
    end if;
    return null;
end $$;

create function ops_lines_changed() returns trigger language plpgsql as $$
declare
    facts ops_line_fact[];
begin
    if TG_OP = 'INSERT' then
        facts := array(select row(1, n.order_id, n.sku, n.quantity)::ops_line_fact
                         from new_rows n where n.status = 'backordered');
    elsif TG_OP = 'DELETE' then
        facts := array(select row(-1, o.order_id, o.sku, o.quantity)::ops_line_fact
                         from old_rows o where o.status = 'backordered');
    else
        facts := array(select row(1, n.order_id, n.sku, n.quantity)::ops_line_fact
                         from new_rows n where n.status = 'backordered'
                        union all
                       select row(-1, o.order_id, o.sku, o.quantity)::ops_line_fact
                         from old_rows o where o.status = 'backordered');
    end if;
    if cardinality(facts) > 0 then
        perform ops_count_lines(facts);
    end if;
    return null;
end $$;

create function ops_work_changed() returns trigger language plpgsql as $$
declare
    facts ops_work_fact[];
begin
    if TG_OP = 'INSERT' then
        facts := array(select row(1, n.node_id, n.status)::ops_work_fact
                         from new_rows n where n.status in ('allocated', 'picked'));
    elsif TG_OP = 'DELETE' then
        facts := array(select row(-1, o.node_id, o.status)::ops_work_fact
                         from old_rows o where o.status in ('allocated', 'picked'));
    else
        facts := array(select row(1, n.node_id, n.status)::ops_work_fact
                         from new_rows n where n.status in ('allocated', 'picked')
                        union all
                       select row(-1, o.node_id, o.status)::ops_work_fact
                         from old_rows o where o.status in ('allocated', 'picked'));
    end if;
    if cardinality(facts) > 0 then
        perform ops_count_work(facts);
    end if;
    return null;
end $$;

-- An order's lines go with it (on delete cascade), after it: count its short lines out while
-- the order still says when it was created.
create function ops_order_deleted() returns trigger language plpgsql as $$
begin
    insert into ops_hour_sku (hour, sku, lines, units, orders)
    select ops_hour_of(old.created_at), l.sku, -count(*), -sum(l.quantity), -1
      from order_lines l
     where l.order_id = old.id and l.status = 'backordered'
     group by l.sku;
    return old;
end $$;

create function ops_truncated() returns trigger language plpgsql as $$
begin
    if TG_TABLE_NAME = 'orders' then
        delete from ops_minute;
        delete from ops_backorder_kind;
        delete from ops_hour_sku;
    elsif TG_TABLE_NAME = 'order_lines' then
        delete from ops_hour_sku;
    else
        delete from ops_node_work;
    end if;
    return null;
end $$;

create trigger ops_orders_inserted after insert on orders
    referencing new table as new_rows for each statement execute function ops_orders_changed();
create trigger ops_orders_updated after update on orders
    referencing old table as old_rows new table as new_rows for each statement execute function ops_orders_changed();
create trigger ops_orders_deleted after delete on orders
    referencing old table as old_rows for each statement execute function ops_orders_changed();
create trigger ops_orders_lines_gone before delete on orders
    for each row execute function ops_order_deleted();
create trigger ops_orders_truncated after truncate on orders
    for each statement execute function ops_truncated();

create trigger ops_lines_inserted after insert on order_lines
    referencing new table as new_rows for each statement execute function ops_lines_changed();
create trigger ops_lines_updated after update on order_lines
    referencing old table as old_rows new table as new_rows for each statement execute function ops_lines_changed();
create trigger ops_lines_deleted after delete on order_lines
    referencing old table as old_rows for each statement execute function ops_lines_changed();
create trigger ops_lines_truncated after truncate on order_lines
    for each statement execute function ops_truncated();

create trigger ops_work_inserted after insert on fulfillments
    referencing new table as new_rows for each statement execute function ops_work_changed();
create trigger ops_work_updated after update on fulfillments
    referencing old table as old_rows new table as new_rows for each statement execute function ops_work_changed();
create trigger ops_work_deleted after delete on fulfillments
    referencing old table as old_rows for each statement execute function ops_work_changed();
create trigger ops_work_truncated after truncate on fulfillments
    for each statement execute function ops_truncated();

-- ---- folding ----------------------------------------------------------------------------------

-- Adds the appended rows into the folded ones, in one transaction (a reader sees before or after,
-- both exact). One folder at a time; a caller that finds another folding just reads.
create function ops_fold() returns void language plpgsql as $$
begin
    if not pg_try_advisory_xact_lock(hashtext('oms.ops_fold')) then
        return;
    end if;
    with moved as (delete from ops_minute where not folded
                   returning minute, channel, orders, gmv_fen, accepted, backordered, cancelled)
    insert into ops_minute (minute, channel, orders, gmv_fen, accepted, backordered, cancelled, folded)
    select minute, channel, sum(orders), sum(gmv_fen), sum(accepted), sum(backordered), sum(cancelled), true
      from moved group by minute, channel
    on conflict (minute, channel) where folded do update
       set orders = ops_minute.orders + excluded.orders, gmv_fen = ops_minute.gmv_fen + excluded.gmv_fen,
           accepted = ops_minute.accepted + excluded.accepted,
           backordered = ops_minute.backordered + excluded.backordered,
           cancelled = ops_minute.cancelled + excluded.cancelled;

    with moved as (delete from ops_backorder_kind where not folded returning kind, orders)
    insert into ops_backorder_kind (kind, orders, folded)
    select kind, sum(orders), true from moved group by kind
    on conflict (kind) where folded do update set orders = ops_backorder_kind.orders + excluded.orders;
    delete from ops_backorder_kind where folded and orders = 0;

    with moved as (delete from ops_hour_sku where not folded returning hour, sku, lines, units, orders)
    insert into ops_hour_sku (hour, sku, lines, units, orders, folded)
    select hour, sku, sum(lines), sum(units), sum(orders), true from moved group by hour, sku
    on conflict (hour, sku) where folded do update
       set lines = ops_hour_sku.lines + excluded.lines, units = ops_hour_sku.units + excluded.units,
           orders = ops_hour_sku.orders + excluded.orders;

    with moved as (delete from ops_node_work where not folded returning node_id, to_pick, picked)
    insert into ops_node_work (node_id, to_pick, picked, folded)
    select node_id, sum(to_pick), sum(picked), true from moved group by node_id
    on conflict (node_id) where folded do update
       set to_pick = ops_node_work.to_pick + excluded.to_pick, picked = ops_node_work.picked + excluded.picked;
    delete from ops_node_work where folded and to_pick = 0 and picked = 0;
end $$;

-- ---- the live lists' indexes ------------------------------------------------------------------

-- Open orders with a promise, by promise: the at-risk list reads only those due within its
-- horizon (sql/queries/ops.sql ops_promise_candidates). The statuses are those an order with an
-- open (allocated or picked) fulfilment can have (oms/orders/model.py _WORK).
create index orders_open_by_promise on orders (promised_by)
    where promised_by is not null
      and status in ('allocated', 'partially_allocated', 'picking', 'picked', 'ready_for_pickup');
-- the latest full reason of each kind of backorder
create index orders_backordered_by_kind on orders (ops_reason_kind(reason), created_at, id)
    where status = 'backordered';
-- the latest backordered line of a SKU (order ids sort by time)
create index order_lines_backordered on order_lines (sku, order_id) where status = 'backordered';

-- ---- what the orders already there add up to ----------------------------------------------------

insert into ops_minute (minute, channel, orders, gmv_fen, accepted, backordered, cancelled, folded)
select ops_minute_of(created_at), channel, count(*), sum(ops_gmv(status, paid_at, total_fen)),
       count(*) filter (where ops_accepted(status)), count(*) filter (where status = 'backordered'),
       count(*) filter (where status = 'cancelled'), true
  from orders
 group by 1, 2;

insert into ops_backorder_kind (kind, orders, folded)
select ops_reason_kind(reason), count(*), true from orders where status = 'backordered' group by 1;

insert into ops_hour_sku (hour, sku, lines, units, orders, folded)
select ops_hour_of(o.created_at), l.sku, count(*), sum(l.quantity), count(distinct l.order_id), true
  from order_lines l join orders o on o.id = l.order_id
 where l.status = 'backordered'
 group by 1, 2;

insert into ops_node_work (node_id, to_pick, picked, folded)
select node_id, count(*) filter (where status = 'allocated'), count(*) filter (where status = 'picked'), true
  from fulfillments
 where status in ('allocated', 'picked')
 group by node_id;
