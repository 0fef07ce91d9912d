-- A hot node's stock split into K buckets in Redis (oms/stock/inventory.py), each under its own
-- hash tag so a Redis Cluster spreads one node's reservations over its shards. 1: not split.
alter table nodes add column stock_buckets integer not null default 1
    check (stock_buckets between 1 and 64);
