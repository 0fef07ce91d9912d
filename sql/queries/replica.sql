-- The read replica (oms/infra/reads.py): how far its replay is behind the primary.

-- name: replica_replayed_lsn
-- on the replica: the last WAL position it has applied (null on a server that is not a standby)
select pg_last_wal_replay_lsn()::text;

-- name: primary_wal_behind
-- on the primary: bytes of WAL written since $1 (the replica's replayed position)
select pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint;
