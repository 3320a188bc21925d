"""The durable workflow engine: YAML DAGs of named, idempotent Python steps, with typed seams.

Every step's start and result is written to the control store before the next step begins, and
the workflow's record carries a snapshot of its definition; so any controller node can resume an
interrupted workflow from its history, under the definition it started with (versioning). A node
owns a running workflow through a short lease it renews; when the owner dies the lease lapses and
another node claims and resumes it. A step fails after its retries, or raises `Escalate`: the
workflow runs its `on_failure` step and is escalated to a person.

Read in this order:
- `definition`: what a workflow file says (steps, `needs`, retries, timeouts) and its DAG;
- `records`: what the control store keeps about one run (the definition snapshot, each step's
  status and JSON output);
- `context`: what a step sees (typed inputs, other steps' typed outputs, the lock) and the base
  models of inputs and outputs;
- `registry`: step functions registered by name, each with the output model it produces and what
  it reads;
- `references`: the load-time check that every step's reads resolve in its workflow;
- `loading`: parsing and loading workflow files (the check included);
- persistence and the owner's lease: `lazarus_lite.coordination` (`WorkflowRecords`);
- `engine`: running, retrying, resuming and escalating.

Not for: the steps themselves (see `lazarus_lite.steps`) or deciding to start (see
`lazarus_lite.controller`).
"""
