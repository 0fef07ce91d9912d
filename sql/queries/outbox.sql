-- The outbox and the dispatcher (oms/channels/outbox.py, oms/channels/dispatcher.py).

-- name: outbox_fold_stock
-- Fold pending 'stock' rows (one per SKU changed, from the triggers) into stock_sync, one row per
-- (shop listing the SKU, SKU), and delete them; rows another dispatcher holds are skipped.
with claimed as (
    delete from outbox
     where id in (select id from outbox where kind = 'stock' and status = 'pending'
                   order by id limit $1 for update skip locked)
    returning sku, created_at
), per_sku as (
    select sku, min(created_at) as at, count(*) as n from claimed group by sku
), marked as (
    insert into stock_sync (shop_id, sku, dirty, changed_at)
    select l.shop_id, p.sku, true, p.at
      from per_sku p
      join listings l on l.sku = p.sku and l.active
      join shops s on s.id = l.shop_id and s.active and s.publish_stock
    on conflict (shop_id, sku) do update
       set dirty = true,
           changed_at = least(stock_sync.changed_at, excluded.changed_at)
    returning 1
)
select coalesce((select sum(n) from per_sku), 0)::int as folded, (select count(*) from marked)::int as marked;

-- name: outbox_fold_resync
-- Fold pending 'resync' rows: every active listing of the shop is marked to be sent again.
with claimed as (
    delete from outbox
     where id in (select id from outbox where kind = 'resync' and status = 'pending'
                   order by id limit 100 for update skip locked)
    returning shop_id, created_at
), shops_done as (
    update shops s set last_full_resync_at = now()
      from (select distinct shop_id from claimed) c where s.id = c.shop_id
), marked as (
    insert into stock_sync (shop_id, sku, dirty, changed_at)
    select l.shop_id, l.sku, true, c.at
      from (select shop_id, min(created_at) as at from claimed group by shop_id) c
      join listings l on l.shop_id = c.shop_id and l.active
      join shops s on s.id = l.shop_id and s.active and s.publish_stock
    on conflict (shop_id, sku) do update
       set dirty = true, changed_at = least(stock_sync.changed_at, excluded.changed_at)
    returning 1
)
select (select count(*) from claimed)::int as folded, (select count(*) from marked)::int as marked;

-- name: outbox_resync_enqueue
-- A full resync of one shop (admin call, schedule); returns the row id.
insert into outbox (kind, shop_id) values ('resync', $1) returning id;

-- name: outbox_resync_due
-- Shops whose last full resync is older than $1 seconds (and none is queued): enqueue one.
insert into outbox (kind, shop_id)
select 'resync', s.id from shops s
 where s.active and s.publish_stock
   and (s.last_full_resync_at is null or s.last_full_resync_at < now() - make_interval(secs => $1))
   and not exists (select 1 from outbox o where o.kind = 'resync' and o.status = 'pending' and o.shop_id = s.id)
returning shop_id;

-- name: outbox_sku_changed
-- A change decided outside PostgreSQL (Redis only): recompute this SKU for every shop.
insert into outbox (kind, sku) select 'stock', unnest($1::text[]);

-- name: stock_sync_claim
-- Lease up to $1 due (shop, SKU) rows for $2 seconds to owner $3. A row in flight with a live
-- lease is skipped (two dispatchers never send one at once); an expired lease is taken over
-- and its change sent again (full values make that harmless). Shops paused by a rate limit wait.
with due as (
    select t.shop_id, t.sku from stock_sync t
      join shops s on s.id = t.shop_id
     where t.status = 'ok' and t.next_at <= now()
       and ((t.dirty and t.lease_until is null) or t.lease_until < now())
       and (s.sync_paused_until is null or s.sync_paused_until <= now())
     order by t.next_at
     limit $1
       for update of t skip locked
)
update stock_sync t
   set dirty = false,
       inflight_since = case when t.lease_until is not null then least(t.inflight_since, t.changed_at)
                             else t.changed_at end,
       changed_at = null,
       lease_until = now() + make_interval(secs => $2),
       lease_owner = $3,
       seq = t.seq + 1
  from due
 where t.shop_id = due.shop_id and t.sku = due.sku
returning t.shop_id, t.sku, t.inflight_since, t.attempts, t.seq;

-- name: stock_sync_done
-- The platform took the value: lease released; a change that came in meanwhile keeps it dirty.
update stock_sync
   set lease_until = null, lease_owner = null, inflight_since = null, attempts = 0, last_sent = $4,
       acked_at = now(), last_code = null, last_error = null
 where shop_id = $1 and sku = $2 and lease_owner = $3;

-- name: stock_sync_failed
-- Not taken: back to dirty, due again after $4 seconds; $5 = 1 counts an attempt (a rate limit
-- does not), dead after $6 attempts with the platform's code and message kept.
update stock_sync
   set lease_until = null, lease_owner = null, dirty = true,
       changed_at = least(changed_at, inflight_since), inflight_since = null,
       attempts = attempts + $5,
       next_at = now() + make_interval(secs => $4),
       status = case when attempts + $5 >= $6 then 'dead' else 'ok' end,
       last_code = $7, last_error = $8
 where shop_id = $1 and sku = $2 and lease_owner = $3
returning status;

-- name: stock_sync_skip
-- Nothing to send for this row (no listing any more, shop inactive): just let it go.
update stock_sync set lease_until = null, lease_owner = null, inflight_since = null
 where shop_id = $1 and sku = $2 and lease_owner = $3;

-- name: shop_pause
-- A rate-limit reply: nothing more goes to this shop for $2 seconds.
update shops set sync_paused_until = greatest(coalesce(sync_paused_until, now()), now() + make_interval(secs => $2))
 where id = $1;

-- name: sync_log_add
insert into sync_log (channel, kind, lag_ms) select $1, $2, unnest($3::int[]);

-- name: sync_log_prune
delete from sync_log where at < now() - make_interval(secs => $1);

-- name: outbox_handover_insert
-- In the hand-over's transaction: a confirmation to send.
insert into outbox (kind, shop_id, order_id, fulfillment_id, payload)
values ($1, $2, $3, $4, $5::jsonb);

-- name: outbox_claim_messages
-- Lease up to $1 due hand-over/cancel messages for $2 s to $3; attempts counts every lease, so a
-- message leased before (attempts > 0 on return) may already have reached the platform.
with due as (
    select o.id from outbox o
      left join shops s on s.id = o.shop_id
     where o.kind in ('handover', 'cancel') and o.status = 'pending' and o.next_at <= now()
       and (o.lease_until is null or o.lease_until < now())
       and (s.sync_paused_until is null or s.sync_paused_until <= now())
     order by o.next_at, o.id
     limit $1
       for update of o skip locked
)
update outbox o
   set lease_until = now() + make_interval(secs => $2), lease_owner = $3, attempts = o.attempts + 1
  from due where o.id = due.id
returning o.id, o.kind, o.shop_id, o.order_id, o.fulfillment_id, o.payload, o.attempts - 1 as tried,
          o.created_at;

-- name: outbox_message_finish
-- done / blocked (refund pending: the store is told) / manual (ops must act) / dead.
update outbox set status = $3, lease_until = null, lease_owner = null, done_at = now(),
                  last_code = $4, last_error = $5
 where id = $1 and lease_owner = $2;

-- name: outbox_message_retry
-- Due again after $3 s; $4 = 0 when a rate limit (not the message) was the cause; dead past $5.
update outbox set lease_until = null, lease_owner = null, next_at = now() + make_interval(secs => $3),
                  attempts = attempts - 1 + $4,
                  status = case when attempts - 1 + $4 >= $5 then 'dead' else 'pending' end,
                  done_at = case when attempts - 1 + $4 >= $5 then now() end,
                  last_code = $6, last_error = $7
 where id = $1 and lease_owner = $2
returning status;

-- name: outbox_dead_list
select 'message' as source, o.id::text as ref, o.kind, o.shop_id, null as sku, o.order_id, o.status, o.attempts,
       o.last_code, o.last_error, o.created_at
  from outbox o where o.status in ('dead', 'blocked', 'manual')
union all
select 'stock', t.shop_id || '/' || t.sku, 'stock', t.shop_id, t.sku, null, t.status, t.attempts,
       t.last_code, t.last_error, t.acked_at
  from stock_sync t where t.status = 'dead'
order by created_at nulls last
limit 500;

-- name: outbox_dead_resend
-- Send dead letters again ($1 null: all shops): attempts start over, errors stay until replaced.
with m as (
    update outbox set status = 'pending', attempts = 0, next_at = now(), done_at = null
     where status = 'dead' and ($1::text is null or shop_id = $1)
    returning 1
), s as (
    update stock_sync set status = 'ok', dirty = true, attempts = 0, next_at = now(),
                          changed_at = coalesce(changed_at, now())
     where status = 'dead' and ($1::text is null or shop_id = $1)
    returning 1
)
select (select count(*) from m)::int as messages, (select count(*) from s)::int as stock;

-- name: handover_context
-- What a confirmation needs about its order and its serving parts.
select o.id, o.channel, o.external_id, o.shop_id, o.delivery_mode, o.pickup_node_id, o.buyer,
       o.paid_at, o.status
  from orders o where o.id = $1;

-- name: handover_parts
-- The order's serving fulfilments, their node, carrier/tracking and lines (platform line ids).
select f.id, f.node_id, f.status, f.carrier, f.tracking_no, n.kind as node_kind,
       coalesce(jsonb_agg(jsonb_build_object('sku', r.sku, 'quantity', r.quantity,
                 'platform_line_id', l.platform_line_id, 'line_quantity', l.quantity))
                filter (where r.sku is not null), '[]') as lines
  from fulfillments f
  join nodes n on n.id = f.node_id
  left join reservations r on r.fulfillment_id = f.id and r.state <> 'released'
  left join lateral (select platform_line_id, quantity from order_lines ol
                      where ol.order_id = f.order_id and ol.sku = r.sku order by line_no limit 1) l on true
 where f.order_id = $1 and f.role = 'serve' and f.status <> 'cancelled'
 group by f.id, n.kind
 order by f.created_at, f.id;

-- name: fulfillment_set_handover_info
update fulfillments set carrier = $2, tracking_no = $3 where id = $1;

-- name: fulfillment_intercept
-- The platform refused the shipment (refund pending): the store must stop the parcel.
update fulfillments set reason = $2, updated_at = now() where id = $1;

-- name: ops_sync_lag
-- Lag percentiles per channel and kind over the last $1 seconds (index sync_log_at).
select channel, kind,
       percentile_cont(0.5) within group (order by lag_ms) as p50,
       percentile_cont(0.99) within group (order by lag_ms) as p99
  from sync_log where at > now() - make_interval(secs => $1)
 group by channel, kind;

-- name: ops_sync_queues
-- Per channel: (shop, SKU) values waiting or dead; confirmations waiting or failed, and the age
-- of the oldest hand-over not yet confirmed.
with stock as (
    select s.channel,
           count(*) filter (where t.status = 'ok' and (t.dirty or t.lease_until is not null)) as pending,
           count(*) filter (where t.status = 'dead') as dead
      from stock_sync t join shops s on s.id = t.shop_id
     where t.status = 'dead' or t.dirty or t.lease_until is not null
     group by s.channel
), confirm as (
    select coalesce(s.channel, o2.channel) as channel,
           count(*) filter (where o.status = 'pending') as pending,
           count(*) filter (where o.status in ('dead', 'blocked', 'manual')) as failed,
           extract(epoch from now() - min(o.created_at) filter (where o.status = 'pending')) as oldest_s
      from outbox o
      left join shops s on s.id = o.shop_id
      left join orders o2 on o2.id = o.order_id
     where o.kind = 'handover' and o.status in ('pending', 'dead', 'blocked', 'manual')
     group by 1
)
select coalesce(st.channel, c.channel) as channel, coalesce(st.pending, 0)::int as stock_pending,
       coalesce(st.dead, 0)::int as stock_dead, coalesce(c.pending, 0)::int as confirm_pending,
       coalesce(c.failed, 0)::int as confirm_failed, c.oldest_s
  from stock st full join confirm c on c.channel = st.channel;

-- name: ops_sync_shops
select id, channel, last_full_resync_at, sync_paused_until from shops order by id;

-- name: ops_outbox_pending
select count(*)::int from outbox where status = 'pending';

-- name: ops_cancels_for_ops
select count(*)::int from outbox where kind = 'cancel' and status = 'manual';

-- name: store_intercepted
-- Hand-overs of this store the platform refused (refund pending): the parcel must be stopped.
select o.order_id, o.fulfillment_id, ord.channel, ord.external_id, f.reason, o.last_error, o.done_at
  from outbox o
  join fulfillments f on f.id = o.fulfillment_id
  join orders ord on ord.id = o.order_id
 where o.status = 'blocked' and f.node_id = $1
 order by o.done_at desc
 limit 100;

-- name: outbox_cancel_insert
-- In the cancel's transaction: an order we cancelled (the platform did not): confirm it or list it for ops.
insert into outbox (kind, shop_id, order_id, payload) values ('cancel', $1, $2, $3::jsonb);

-- name: ops_cancels_list
-- Cancels we decided that ops must still confirm on the platform (oldest first).
select o.id, o.order_id, ord.channel, ord.external_id, o.shop_id, o.payload->>'cause' as cause,
       o.payload->>'reason' as reason, o.last_error, o.created_at
  from outbox o
  join orders ord on ord.id = o.order_id
 where o.kind = 'cancel' and o.status = 'manual'
 order by o.created_at
 limit $1;
