-- Channel intake (oms/channel_intake.py): the inbox, the pollers' watermarks, refunds of lines.
-- The SKU mapping table is read with `sku_map_for_channel` (catalogue.sql).

-- name: inbox_insert
-- Store a raw channel message once per (channel, message id); a row comes back only when it is new.
insert into inbox (channel, message_id, topic, external_id, raw, kind)
values ($1, $2, $3, $4, $5, $6)
on conflict (channel, message_id) do nothing
returning status;

-- name: inbox_status
select status from inbox where channel = $1 and message_id = $2;

-- name: inbox_mark
-- processed (with an optional note) or failed (with the error); processed_at is the last attempt.
update inbox set status = $3, error = $4, note = $5, processed_at = now()
 where channel = $1 and message_id = $2;

-- name: inbox_cancel_recorded
-- Has the channel told us to cancel this order (index inbox_cancels)? Checked around every upsert.
select exists (select 1 from inbox where channel = $1 and external_id = $2 and kind = 'cancel');

-- name: channel_watermark_get
select value from channel_watermarks where channel = $1;

-- name: channel_watermark_set
-- Never moves a watermark back (two pollers overlapping, a clock step): the later time wins.
insert into channel_watermarks (channel, value, updated_at) values ($1, $2, now())
on conflict (channel) do update set value = excluded.value, updated_at = now()
 where channel_watermarks.value::timestamptz < excluded.value::timestamptz;

-- name: order_fill_paid_at
-- An order stored unpaid and paid later: record when, and (delivery) the promise counted from it.
update orders
   set paid_at = $2::timestamptz,
       promised_by = coalesce(promised_by, case when delivery_mode = 'delivery'
                                                then $2::timestamptz + make_interval(mins => $3::int) end),
       updated_at = now()
 where id = $1 and paid_at is null;

-- name: channel_fulfillment_open_units
-- Units a fulfilment still holds (reserved) or handed over (committed).
select coalesce(sum(quantity), 0)::int from reservations
 where fulfillment_id = $1 and state in ('reserved', 'committed');
