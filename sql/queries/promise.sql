-- The inputs of the promise clock (oms/network/promise.py): for each open fulfilment, its order's
-- promise and its place in its node's picking queue. The queue is the pick list's order:
-- promised_by, then paid_at (orders without either last), then allocation time and id; `ahead` counts
-- the allocated fulfilments before it at the same node. The rule itself (at risk, late) is Python's.

-- name: promise_queue_of_order
-- The order's open fulfilments with their queue position (indexes fulfillments_by_order,
-- fulfillments_by_node_status).
select f.id, f.node_id, f.status, n.capacity_per_hour,
       case when f.status = 'allocated' then (
           select count(*)
             from fulfillments q
             join orders qo on qo.id = q.order_id
            where q.node_id = f.node_id and q.status = 'allocated'
              and (coalesce(qo.promised_by, 'infinity'::timestamptz), coalesce(qo.paid_at, 'infinity'::timestamptz),
                   q.created_at, q.id)
                < (coalesce(o.promised_by, 'infinity'::timestamptz), coalesce(o.paid_at, 'infinity'::timestamptz),
                   f.created_at, f.id))
       else 0 end::int as ahead
  from fulfillments f
  join orders o on o.id = f.order_id
  join nodes n on n.id = f.node_id
 where f.order_id = $1 and f.status in ('allocated', 'picked')
 order by f.id;

-- name: promise_open_fulfillments
-- Every open fulfilment (to pick or picked, waiting for the courier) with its promise and queue
-- position, for /ops/summary and the /metrics gauges (index fulfillments_by_node_status).
select f.id as fulfillment_id, f.node_id, f.status, f.order_id, o.promised_by, n.capacity_per_hour,
       case when f.status = 'allocated'
            then (row_number() over (
                      partition by f.node_id, f.status
                      order by coalesce(o.promised_by, 'infinity'::timestamptz),
                               coalesce(o.paid_at, 'infinity'::timestamptz), f.created_at, f.id)) - 1
            else 0 end::int as ahead
  from fulfillments f
  join orders o on o.id = f.order_id
  join nodes n on n.id = f.node_id
 where f.status in ('allocated', 'picked');
