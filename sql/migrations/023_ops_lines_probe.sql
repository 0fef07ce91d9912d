-- The backordered-lines rollup trigger (017) read each order's created_at through a join on
-- `orders`. Since `orders` is partitioned by month (022) a generic plan of that join (PL/pgSQL
-- caches one; the group-commit writer forces them) scans every month whole: 6.4 ms of a 32-order
-- batch's 10 ms on a bench database of 30,000 orders, growing with the orders kept. A scalar
-- subquery per (order, SKU) is one index probe per month instead, whatever the plan.
-- Same meaning: lines whose order is gone (a delete, counted out by orders_gone first) are skipped.
create or replace function ops_count_lines(facts ops_line_fact[]) returns void language plpgsql as $$
begin
    with d as (
        select f.order_id, f.sku, sum(f.sign) as lines, sum(f.sign * f.quantity) as units
          from unnest(facts) f
         group by 1, 2
        having (sum(f.sign), sum(f.sign * f.quantity)) <> (0, 0)
    ), c as (
        select d.*, (select o.created_at from orders o where o.id = d.order_id) as created_at,
               (select count(*) from order_lines l
                 where l.order_id = d.order_id and l.sku = d.sku and l.status = 'backordered') as now_lines
          from d
    )
    insert into ops_hour_sku (hour, sku, lines, units, orders)
    select ops_hour_of(created_at), sku, sum(lines), sum(units),
           sum((now_lines > 0)::int - (now_lines - lines > 0)::int)
      from c
     where created_at is not null
     group by 1, 2;
end $$;
