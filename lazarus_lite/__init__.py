"""Lazarus-lite: the remediation controller. Three nodes take events from the stream, decide
whether to act, and run durable workflows that act; each decision is written down.

Where things happen, in the order an event meets them:
- an event is **decided** in `controller` (`ControllerNode.handle`): one incident per failure
  (`incidents`), the first matching rule (`rules`), the safety gates (`gates`), the quorum of
  nodes on the rule's precondition checks (`quorum`, `checks`), then a workflow or a person;
  every decision goes to the audit trail and the pager (`decisions`, `audit`, `paging`);
- a replica is **promoted** by the workflow `ratequeue_failover`, whose steps are in
  `steps/ratequeue_promotion.py`, run by the durable engine in `workflow/`;
- around the shard: `shard_keeper` puts returning nodes back, `shard_watch` reports silent
  sensors and unwritable shards, `actuators` starts replacement nodes;
- while the coordination store is unreachable nothing acts: `shard_watch` hands a primary it
  sees down to a person (`decisions`), and `held_records` keeps that escalation until the
  record log takes it.

Also: `profiles` (a service's YAML opts it in), `service` and `routes/` (REST), `cli`
(`lazarus`), `settings`, `coordination` (the coordination store every node shares: its
interface and the Redis backend), `errors` (the exception tree), shipped YAML in
`definitions/`. Not for: detecting failures (`detection`) or injecting them (`chaos`).
"""
