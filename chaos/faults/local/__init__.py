"""The local fault backend: faults on processes of this machine, by signal and by iptables.

Where each part lives (the backend, `backend.LocalFaultBackend`, only dispatches to them):

- `process_faults`: kill, pause, resume, stop and start a node's process.
- `checked_process`: which process a signal may reach (the pidfd and the program check).
- `blackhole`: cut a node's peer path (or one process's path to it) with DROP rules.
- `latency`: slow a node's peer path down through a latency proxy and a DNAT rule.
- `cpu_burst`: keep cores of this machine busy with busy-loop processes.
- `iptables`: the dedicated chains and their tagged rules; `cgroups`: one process moved into
  a cgroup of its own so a rule can match its sockets; `peer_address`: where peers reach a
  node.

Actions (`LocalFaultBackend.inject(action, target, **params)`):

- `kill`: SIGKILL the node's pid. No undo, unless told how to boot it again (`restart` or
  `command`, as for `stop`): then the undo restarts it once.
- `pause`: SIGSTOP; undo SIGCONT. `resume`: SIGCONT, no undo.
- `stop`: SIGTERM (repeated: Redis ignores it while writing its first AOF), SIGKILL after
  `grace` seconds (default 5). The undo restarts the node only if told how: `restart` (a
  callable) or `command` (an argv list, started detached); otherwise there is no undo and
  `details["undo"]` says so.
- `start`: run `restart` or `command`, then wait up to `wait_seconds` (default 10; 0: don't)
  until the node's client address accepts TCP connections. No undo.
- `blackhole`: DROP every TCP packet to and from the node's peer address (`peer_host`, default
  `target.peer_host` or 127.0.0.2, and `ports`, default `[target.port]`), both directions,
  established connections too; the client address (127.0.0.1:port) keeps working. Undo deletes
  exactly those rules. With `from_target` (a NodeTarget with a pid, checked like any target;
  `from_expect` overrides the program) only that process's path to the node is cut: it is
  moved into a cgroup v2 group of its own (`<chain>-<fault id>`), new connections are matched
  with `-m cgroup --path`, the connections it already holds by their local ports; undo also
  moves it back and removes the group. One such fault per process at a time: a second would
  move it out of the first's group and silently disarm its rule, so it is refused (cut several
  ports from one process with one fault and `ports`).
- `latency`: start `python -m chaos.faults.latency_proxy` in front of the node's client address
  with `latency_ms` added per chunk (`direction`: egress (default), ingress or both), and a
  `nat` OUTPUT DNAT rule that sends new connections to peer_host:port through it. Connections
  already open when the fault starts keep their direct path. Undo removes the rule, then
  stops the proxy.
- `cpu`: start `cores` (default: every core this process may run on) busy-loop Python
  processes at normal priority that end by themselves after `length` seconds (default 60;
  more than 0, at most a day); undo notes each loop's CPU seconds so far
  (`details["cpu_seconds"]`, by pid, from /proc/PID/stat: the journal shows the burst burnt
  CPU), then kills them. A burst loads the host, not the target: on the embedded testbed
  every node shares this machine. `cleanup_all()` also kills the loops a crashed run left.

Every signal goes through a pidfd opened before the program check, so a pid recycled between
the check and the signal is never hit: the check reads /proc/PID/cmdline and comm and expects
the program (argv[0]'s basename, or the script or `-m` package of a Python interpreter; never a
word among the arguments) to be `redis-server` with `:PORT` in its command line for Redis
roles, one of its role's programs (`common.nodes.PROGRAMS_OF_ROLE`) for the others, or the
`expect` param (a program name, not a piece of the command line); anything else is
refused with FaultError. `seconds` (any action with an undo)
rolls the fault back by itself after that long.

iptables rules live in one dedicated chain per table (default `RQCHAOS`, jumped to from
filter INPUT and OUTPUT and from nat OUTPUT), each tagged `-m comment --comment
rqchaos:<fault id>`. Chain creation is idempotent; `cleanup_all()` removes the chains, their
jumps and so every rule they hold (after a crashed run). The chains themselves stay while
faults come and go, so concurrent faults never race on them.

Not for: remote machines or containers (see the docker and gremlin backends), choosing
targets, or judging what a fault did.
"""
