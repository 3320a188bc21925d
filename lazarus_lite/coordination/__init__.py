"""The coordination store: the state that decides failovers, shared by every controller node,
behind one interface (`interface.CoordinationStore`) so the store can be Redis or a consensus
store (etcd) without any caller knowing which.

- `interface`: the protocols, grouped by idea: resource locks with fencing tokens, workflow
  records with their owner lease, incident claims, the safety gates' sliding windows and flags
  (kill switch, shadow mode), the sensor registry and the shard watch's marks, the stateless
  services' balancer membership, approvals, the chaos runner's run lock, and the record log
  (each backend also names the errors it raises when it cannot answer); the topology's protocol is
  `ratequeue.topology.TopologySource` (the queue does not depend on the controller);
- `redis_backend` with its private `redis_keys`: all of it in one Redis control store, with
  the keys and scripts the controller always used;
- `etcd_backend` with its private `etcd_keys`: all of it but the record log in an etcd cluster
  (leases for TTLs, a transaction for every "only if", the lock key's create_revision as the
  fencing token), the topology under `ratequeue.etcd_topology`, and the record log in the Redis
  on `control_url` (the one that carries the event stream);
- `opening`: `open_coordination_store`, the store the `coordination_backend` setting names;
- `unreachable`: `STORE_UNREACHABLE`, the errors of either backend that say its store is away.

Where each piece lives, by backend:

| piece | `redis` | `etcd` |
|---|---|---|
| topology, locks, workflows, claims, windows, flags, marks, run lock | control Redis | etcd |
| record log (audit, escalations, shadow decisions, write failures) | control Redis | same |
| `unavailable` | `RedisError` | `EtcdUnreachable` (etcd), `RedisError` (record log) |

What must be linearizable is what decides a failover: the topology and its epoch, the locks and
their fencing tokens, workflow records and owner leases, incident claims, the kill switch,
shadow mode, the breaker's and rate limit's windows, the watch's marks, approvals and the run
lock. Two nodes that read different answers there could both act, or act against a person's
switch.

What may stay in Redis whatever the backend is the record log (`interface.RecordLog`): the
audit trail, the escalations stream, the shadow decisions and the API's write failures. They
are written after a decision, for people and reports; nothing reads them to decide whether to
act, except the incident claims' "was the first report declined?" question, which only ever
makes a retry earlier or later. Losing their last second in a crash loses a line of history,
never a second failover; and while their Redis is away a controller holds its writes in memory
(`lazarus_lite.held_records`) and decides on, so on etcd that Redis is no single point of
failure for failover. The sensor heartbeats are evidence too, but they live beside the
watch's marks so a node's view of the sensors and its marks come from one store.
Not for: the event stream (`detection.streams`, `detection.kinesis`).
"""
