-- order_history, the fastest-growing table (several rows per order), partitioned by month on `at`.
-- Old months can then be detached or dropped whole instead of deleted row by row; queries by
-- order stay on (order_id, id) indexes per partition. A default partition takes any row no month
-- covers, so an insert never fails for want of a partition; `history_partitions_ensure` (run at
-- every start-up) keeps the next months ready. `orders` itself is not partitioned: its child tables
-- reference its id and its unique (channel, external_id) would need the partition key (README).
alter table order_history rename to order_history_unpartitioned;
alter index order_history_by_order rename to order_history_unpartitioned_by_order;
alter sequence order_history_id_seq owned by none;

create table order_history (
    id           bigint not null default nextval('order_history_id_seq'),
    order_id     text not null references orders (id) on delete cascade,
    at           timestamptz not null default now(),
    from_status  text,
    to_status    text not null,
    cause        text not null,
    detail       jsonb,
    primary key (id, at)
) partition by range (at);
create index order_history_by_order on order_history (order_id, id);
create table order_history_default partition of order_history default;

create or replace function oms_history_partitions(months_ahead int) returns int
language plpgsql as $$
declare
    oldest timestamptz;
    first_month date;
    last_month date := (date_trunc('month', now() at time zone 'UTC') + make_interval(months => months_ahead))::date;
    m date;
    made int := 0;
begin
    -- the months of rows still to move in (only while this migration runs), else from this month
    if to_regclass('order_history_unpartitioned') is not null then
        execute 'select min(at) from order_history_unpartitioned' into oldest;
    end if;
    first_month := date_trunc('month', coalesce(oldest, now()) at time zone 'UTC')::date;
    m := first_month;
    while m <= last_month loop
        if to_regclass(format('order_history_%s', to_char(m, 'YYYY_MM'))) is null then
            execute format('create table %I partition of order_history for values from (%L) to (%L)',
                           format('order_history_%s', to_char(m, 'YYYY_MM')),
                           (m::timestamp at time zone 'UTC'), ((m + interval '1 month')::timestamp at time zone 'UTC'));
            made := made + 1;
        end if;
        m := (m + interval '1 month')::date;
    end loop;
    return made;
end $$;

select oms_history_partitions(12);
insert into order_history (id, order_id, at, from_status, to_status, cause, detail)
select id, order_id, at, from_status, to_status, cause, detail from order_history_unpartitioned;
drop table order_history_unpartitioned;
alter sequence order_history_id_seq owned by order_history.id;
