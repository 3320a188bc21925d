"""`ratequeue-chaos agent`: a Gremlin-compatible attacks API on loopback that runs attacks on this
machine's nodes through the local fault backend, so experiments written for Gremlin (and the
gremlin fault backend) run against the local testbed unchanged.

Where each part lives:

- `commands`: Gremlin's command and target shapes, parsed and checked into a `Plan`.
- `targets`: the nodes the agent may attack, read from a testbed or a targets file.
- `attacks`: one attack's state, its stages and its Gremlin-shaped views.
- `execution`: how an attack is carried out on its targets (may this plan touch this node,
  inject, wait, roll back).
- `state`: the `Agent`, the attacks by guid with every check, HTTP aside.
- `app`: the HTTP layer (`create_app`) over an `Agent`; `errors`: the refusal and its body.

It serves, under `/v1` (the shape `chaos.faults.gremlin` documents, with its sources):
`POST /attacks` (201, the attack guid as text/plain; the deprecated `POST /attacks/new`, which
gremlin-python still posts to, does the same), `GET /attacks/{guid}` (the attack with `stage`
and `stageLifecycle`), `DELETE /attacks/{guid}` (halt: roll back; 202),
`GET /attacks`, `/attacks/active`, `/attacks/completed`, `DELETE /attacks` (halt all),
`GET /executions?taskId={guid}` (one entry per target), and `GET /healthz` (no key needed).

Safety, in this order, before anything is done: the API key (`Authorization: Key <key>`; 401),
the request shape (400 naming the field), the allowlist of target identifiers (403), the
command and its args (400 naming the field). Only Exact targets naming their hosts, as
gremlin-python writes them (`{"type": "Exact", "hosts": {"ids": [...]}}`, or `containers.ids`;
also an `exact` list, the Concord plugin's shape), are accepted, only on identifiers the
targets file knows; network attacks may only name the target's own port and its own
addresses; the backend then signals a pid only if its program (the executable, or a Python
script or module: never a word among its arguments) is the target's. Every refusal, the
framework's too (unknown path 404, another method 405 with `Allow`, a body over 64 KiB 413),
is JSON `{"error": <reason>, "message", "field"?}` quoting no long value back; no answer
carries a traceback. The published OpenAPI declares the body, the key and every status each
operation answers.

Commands: `process_killer` (kill; `-p` must name the node's program), `process_pause` (agent
extension: SIGSTOP, halted by SIGCONT), `shutdown` (SIGTERM then SIGKILL; `-r` restarts it when
the targets file gives a `command`), `blackhole` (`-p`/`-n` ports, `-h`/`-i` addresses),
`latency` (`-m MS`, `-p`, `-h`). `-l`/`--length` (default 60 s, Gremlin's) rolls the attack
back by itself; stages go Pending → Distributed → Running → Successful, or → HaltDistributed →
UserHalted on DELETE (lifecycle `Complete` both), or → Failed (lifecycle `Error`, with
`output`) when the fault could not be injected. A `commandType`, when given, must be the one
gremlin-python pairs with the type (`Process Killer` for `process_killer`, ...).

Targets come from a testbed (`testbed.json` or its directory, re-read when it changes, so
replaced nodes' pids are current) or a targets file (YAML or JSON): `{"targets": [{"name":
..., "role": ..., "port": ..., "pid": ..., "peer_host": ..., "command": [argv to restart],
"expect": "program"}]}`.

Not for: anything off loopback, scheduling experiments, or Gremlin's scenarios and templates.
"""
