-- Channel intake (oms/channel_intake.py): what each inbox message asked for, and a note on
-- how it was applied.
--   kind  the ChannelEvent kind: upsert | cancel | refund_lines | status | ignore. A 'cancel' row
--         for an order we do not have yet is the record that makes its later create arrive
--         cancelled (platforms do not promise to deliver a create before its cancel).
--   note  what applying it did when that was not the obvious thing (e.g. "cancel after
--         hand-over: not applied"); `error` stays for failures.
alter table inbox add column if not exists kind text;
alter table inbox add column if not exists note text;
create index if not exists inbox_cancels on inbox (channel, external_id) where kind = 'cancel';
