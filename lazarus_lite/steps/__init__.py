"""The built-in workflow steps, one module per runbook; importing this package registers every
step function by name in the workflow engine's registry.

- `ratequeue_promotion`: promote the replica holding every acknowledged write, fence the old
  primary (the `ratequeue_failover` workflow);
- `host_replacement`: replace a stateless service's host behind its load balancer;
- `resource_locks`: take and give back the rule's resource lock;
- `approval`: hold a workflow until an operator approves it.

Not for: the engine that runs them (`lazarus_lite.workflow`).
"""

from lazarus_lite.steps import approval, host_replacement, ratequeue_promotion, resource_locks

__all__ = ["approval", "host_replacement", "ratequeue_promotion", "resource_locks"]
