-- `orders` partitioned by month (UTC) on created_at, like order_history (021): old months can be
-- detached or dropped whole, a default partition takes any row no month covers, and start-up
-- (`partitions_ensure`) keeps the next months of both tables ready.
--
-- A unique index on a partitioned table must contain the partition key, so (channel, external_id)
-- can no longer be unique on `orders` itself. A small unpartitioned `order_keys` table holds that
-- uniqueness (an order is written only after its key went in: sql/queries/orders.sql
-- orders_write_batch) and is what the children reference (on delete cascade, as they referenced
-- orders). An order is deleted as before, from `orders`: its key follows (orders_gone below) and
-- takes the children along. A key is not deleted while its order is there (order_keys_gone): the
-- cascade would run the children's triggers after the order's, when neither could count the
-- order's short lines out of the rollups any more.
--
-- `orders` itself has no foreign key to order_keys: its per-row check cost the group-commit write
-- ≈ 6 µs more PostgreSQL CPU an order (backend CPU over runs of 10,240 orders: ≈ 88 µs with it,
-- ≈ 82–84 without, ≈ 77–79 unpartitioned). Orders are written in one place after their keys,
-- and an order's lines cannot go in without its key.
--
-- Lookups by id alone (order_by_id and the like) do not prune: they probe the (id, created_at)
-- primary key of every partition. Measured (generic plans, server side, 300k orders): ≈ 16 µs a
-- lookup with 5 partitions against ≈ 9 µs unpartitioned (for update ≈ 28 against ≈ 12), ≈ 30
-- with 14 partitions (for update ≈ 50). The cost is opening and locking each partition, not the
-- probe, so pruning through order_keys (created_at kept there, the partition found from it) was
-- no faster (≈ 37 with 14); pruning by the time in the id would need a window around it (an id is
-- minted before its write, on another host's clock) and would miss an order whose created_at
-- was set apart from its id (an import). Instead the horizon is short (this month and three
-- ahead, `partitions_ensure`) and old months are meant to be detached. Where only existence
-- matters (order_exists, orders_existing, order_id_by_external), order_keys answers alone.
lock table orders, order_lines, fulfillments, order_history in share row exclusive mode;

create table order_keys (
    id           text primary key,
    channel      text not null,
    external_id  text not null,
    -- external_id first: GET /orders?external_id= finds an order by it alone (any channel)
    unique (external_id, channel)
);

alter table orders rename to orders_unpartitioned;
alter table orders_unpartitioned rename constraint orders_pkey to orders_unpartitioned_pkey;

-- the same columns (and checks, defaults) in the same order: `select *` readers see no change
create table orders (
    like orders_unpartitioned including defaults including constraints including storage including comments,
    primary key (id, created_at)
) partition by range (created_at);
create table orders_default partition of orders default;

-- The months of each partitioned table, from this month (or, while a migration moves rows in from
-- `<table>_unpartitioned`, the oldest of them) to `months_ahead` ahead. A month whose rows went to
-- the default partition meanwhile (the service ran past the months made ready) has them moved
-- into its own partition, so that creating it never fails. One caller at a time: processes
-- starting together do not race to create the same month.
create function oms_month_partitions(parent text, key text, months_ahead int) returns int
language plpgsql as $$
declare
    oldest timestamptz;
    first_month date;
    last_month date := (date_trunc('month', now() at time zone 'UTC') + make_interval(months => months_ahead))::date;
    m date;
    part text;
    lo timestamptz;
    hi timestamptz;
    strays bigint;
    made int := 0;
begin
    perform pg_advisory_xact_lock(hashtext('oms.month_partitions'));
    if to_regclass(parent || '_unpartitioned') is not null then
        execute format('select min(%I) from %I', key, parent || '_unpartitioned') into oldest;
    end if;
    first_month := date_trunc('month', coalesce(oldest, now()) at time zone 'UTC')::date;
    m := first_month;
    while m <= last_month loop
        part := format('%s_%s', parent, to_char(m, 'YYYY_MM'));
        lo := m::timestamp at time zone 'UTC';
        hi := (m + interval '1 month')::timestamp at time zone 'UTC';
        if to_regclass(part) is null then
            execute format('select count(*) from %I where %I >= %L and %I < %L',
                           parent || '_default', key, lo, key, hi) into strays;
            if strays = 0 then
                execute format('create table %I partition of %I for values from (%L) to (%L)', part, parent, lo, hi);
            else
                -- rows moved between partitions directly: no statement trigger of the parent fires,
                -- the rows stay what they were (rollups, keys and children untouched)
                execute format('create table %I (like %I including defaults including constraints)', part, parent);
                execute format('with moved as (delete from %I where %I >= %L and %I < %L returning *)'
                               ' insert into %I select * from moved', parent || '_default', key, lo, key, hi, part);
                execute format('alter table %I attach partition %I for values from (%L) to (%L)', parent, part, lo, hi);
            end if;
            made := made + 1;
        end if;
        m := (m + interval '1 month')::date;
    end loop;
    return made;
end $$;

-- The one place that knows which tables are partitioned by month: start-up calls this.
create function oms_partitions(months_ahead int) returns int language sql as $$
    select oms_month_partitions('orders', 'created_at', months_ahead)
         + oms_month_partitions('order_history', 'at', months_ahead)
$$;
drop function oms_history_partitions(int);

select oms_month_partitions('orders', 'created_at', 3);

-- the rows, before any trigger is on the new table (the rollups already count them)
insert into order_keys (id, channel, external_id) select id, channel, external_id from orders_unpartitioned;
insert into orders select * from orders_unpartitioned;

-- Every foreign key to orders (id) now points at order_keys (id), with the same actions; and
-- every index of orders is made again on the partitioned table, but the two unique ones: the
-- primary key is (id, created_at) now and (channel, external_id) lives in order_keys.
do $$
declare
    c record;
    def text;
begin
    for c in select conrelid::regclass as tbl, conname, pg_get_constraintdef(oid) as def
               from pg_constraint
              where contype = 'f' and confrelid = 'orders_unpartitioned'::regclass and conparentid = 0 loop
        def := regexp_replace(c.def, 'REFERENCES ((\S+\.)?)orders_unpartitioned\(id\)', 'REFERENCES \1order_keys(id)');
        if def = c.def then
            raise 'cannot move foreign key % of % to order_keys: %', c.conname, c.tbl, c.def;
        end if;
        execute format('alter table %s drop constraint %I', c.tbl, c.conname);
        execute format('alter table %s add constraint %I %s', c.tbl, c.conname, def);
    end loop;
    for c in select i.indexrelid::regclass::text as name, pg_get_indexdef(i.indexrelid) as def
               from pg_index i
              where i.indrelid = 'orders_unpartitioned'::regclass and not i.indisunique loop
        def := regexp_replace(c.def, ' ON ((\S+\.)?)orders_unpartitioned ', ' ON \1orders ');
        if def = c.def then
            raise 'cannot make index % again on the partitioned orders: %', c.name, c.def;
        end if;
        execute format('drop index %I', c.name);
        execute def;
    end loop;
end $$;

drop table orders_unpartitioned;  -- and its triggers, made again below

-- ---- the ops rollups (017) on the partitioned table ---------------------------------------------

-- Statement triggers with transition tables work on a partitioned parent (they see the rows of
-- every partition). A row trigger would also fire when an update moves a row to another month
-- (PostgreSQL runs a BEFORE DELETE there), so the short lines of a deleted order are counted out
-- by a statement trigger instead (below), which a move does not fire.
drop function ops_order_deleted();

create trigger ops_orders_inserted after insert on orders
    referencing new table as new_rows for each statement execute function ops_orders_changed();
create trigger ops_orders_updated after update on orders
    referencing old table as old_rows new table as new_rows for each statement execute function ops_orders_changed();
create trigger ops_orders_deleted after delete on orders
    referencing old table as old_rows for each statement execute function ops_orders_changed();
create trigger ops_orders_truncated after truncate on orders
    for each statement execute function ops_truncated();

-- Orders deleted: their short lines counted out while the lines are still there and the orders'
-- rows still say when they were created, then their keys deleted, which takes the lines,
-- fulfilments and history along (their own triggers then find no order and count nothing twice).
create function orders_gone() returns trigger language plpgsql as $$
begin
    insert into ops_hour_sku (hour, sku, lines, units, orders)
    select ops_hour_of(o.created_at), l.sku, -count(*), -sum(l.quantity), -count(distinct o.id)
      from old_rows o join order_lines l on l.order_id = o.id and l.status = 'backordered'
     group by 1, 2;
    delete from order_keys k using old_rows o where k.id = o.id;
    return null;
end $$;

create trigger orders_gone after delete on orders
    referencing old table as old_rows for each statement execute function orders_gone();

create function order_keys_gone() returns trigger language plpgsql as $$
declare
    still text;
begin
    select o.id into still from old_rows k join orders o on o.id = k.id limit 1;
    if found then
        raise foreign_key_violation using
            message = format('order %s is still there: delete it from orders, its key and children follow', still);
    end if;
    return null;
end $$;

create trigger order_keys_gone after delete on order_keys
    referencing old table as old_rows for each statement execute function order_keys_gone();
