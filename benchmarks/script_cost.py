"""What each queue script costs the shard primary per message, for the scripts of a git revision
next to this checkout's, in one run, and next to floors: scripts that do only the commands any
per-number queue with a per-message id index must do. Run by hand from the repository root:
`python -m benchmarks.script_cost [--rev HEAD] [--rounds 4]`.

Each round, for each side in turn, flushes one shard (a primary and one replica, the testbed's
AOF settings), enqueues `--messages` 20-character messages over `--numbers` numbers in calls of
`--batch` (each followed by `WAIT 1`, as the client does), then leases and acknowledges them all
in calls of `--batch`, reading the primary's CPU (`INFO cpu`) around every call. The figure is
the primary's CPU per message by script; the median of the rounds is printed and the rounds
beside it, so drift on the machine shows. Rates are far above what a shard serves.

`--native` adds the floor pass as module commands in C (benchmarks/native/native_floor.c,
compiled with `cc` and loaded on both nodes), made three ways: through command calls as a
script makes them, on the keys directly, and replicated once per call instead of once per
write: how much of a pass Lua costs and how much the commands and their replication do. The
replica's CPU for the whole pass is printed beside (on two cores it competes with the primary).

What it is for: telling whether a script change makes the primary's work per message smaller
(queue_throughput's (b) ratio is that work seen through the wall clock, with the client and the
network in it). Not for: throughput, the client's share, memory (queue_throughput.py), or CI.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import redis
import typer
from rich.console import Console
from rich.table import Table

from benchmarks.cpu_hogs import cpu_hogs, every_core
from benchmarks.queue_throughput import node_cpu
from ratequeue.local_cluster import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
EPOCH = "1"
UNLIMITED_RATE = "100000:1000000"
LEASE_MS = 600_000
DEDUP_WINDOW_S = 600
REQUEUE_LIMIT = 100

# Floors: scripts that do, per message, only what any per-number queue that indexes held
# messages by id does at least, in the queue's key layout, and nothing else (no fingerprint, no
# capacity check, no dedup window, no rate, no fence, no legacy reads, no malformed-line
# handling). What the queue's scripts cost beyond them is what their guarantees and their
# bookkeeping add. The enqueue floors add one command at a time; the pass floor is the last
# enqueue floor with a floor dequeue and ack.
_FLOOR_ENQUEUE = r"""
local blob, position, n, ready = ARGV[5], 1, 0, {}
while position <= #blob do
  local stop = string.find(blob, '\n', position, true) or (#blob + 1)
  local line = string.sub(blob, position, stop - 1)
  position = stop + 1
  local number, _, segments, id, body = string.match(line, '^([%w+]+)|([^|]*)|(%d+)|([^|]*)|(.+)$')
  n = n + 1
  local key = 'rq:v2:n:' .. number
  COMMANDS
end
for first = 1, #ready, 4000 do
  redis.call('ZADD', 'rq:v2:ready', unpack(ready, first, math.min(first + 3999, #ready)))
end
redis.call('INCR', 'rq:barrier')
return n
"""
_ENQUEUE_COMMANDS = {
    "parse only": "",
    "+ RPUSH": "redis.call('RPUSH', 'rq:v2:q:' .. number, '0|' .. segments .. '|' .. id .. '|' "
    ".. body)",
    "+ HSET": "redis.call('RPUSH', 'rq:v2:q:' .. number, '0|' .. segments .. '|' .. id .. '|' "
    ".. body) redis.call('HSET', key, '@' .. id, 'abcdef0123456789', 's', n)",
    "+ HMGET": "redis.call('HMGET', key, 'r', 's', 't', '@' .. id) "
    "if redis.call('RPUSH', 'rq:v2:q:' .. number, '0|' .. segments .. '|' .. id .. '|' .. body) "
    "== 1 then ready[#ready + 1] = 0 ready[#ready + 1] = number end "
    "redis.call('HSET', key, '@' .. id, 'abcdef0123456789', 's', n)",
}
# Lease one message per due number (its state read, its entry kept in its hash under the lease's
# sequence number), the leases and the numbers' next times written once per call.
_FLOOR_DEQUEUE = r"""
local now = redis.call('TIME')[1] * 1000
local due = redis.call('ZRANGE', 'rq:v2:ready', 0, tonumber(ARGV[1]) - 1)
local seq = redis.call('INCRBY', 'rq:lease_seq', #due) - #due
local out, leases, later, gone = {}, {}, {}, {}
for _, number in ipairs(due) do
  local key = 'rq:v2:n:' .. number
  redis.call('HMGET', key, 'r', 't')
  local entry = redis.call('LPOP', 'rq:v2:q:' .. number)
  if entry then
    seq = seq + 1
    local id = string.match(entry, '^%d+|%d+|([^|]*)|')
    redis.call('HSET', key, 't', now, seq, entry)
    local lease = seq .. ':' .. number .. '/' .. id
    leases[#leases + 1] = now + 600000
    leases[#leases + 1] = lease
    later[#later + 1] = seq  -- served numbers go to the back: one message per number in turn
    later[#later + 1] = number
    for _, item in ipairs({lease, id, number, 0, entry}) do out[#out + 1] = item end
  else
    gone[#gone + 1] = number
  end
end
if #leases > 0 then redis.call('ZADD', 'rq:v2:leases', unpack(leases)) end
if #later > 0 then redis.call('ZADD', 'rq:v2:ready', unpack(later)) end
if #gone > 0 then redis.call('ZREM', 'rq:v2:ready', unpack(gone)) end
return {now, out}
"""
# Acknowledge: check and drop the leases (once per call), then per message read the entry, drop
# it and its id's entry from the number's hash and lower the held count.
_FLOOR_ACK = r"""
local leases = {}
for lease in string.gmatch(ARGV[1], '%S+') do leases[#leases + 1] = lease end
redis.call('ZMSCORE', 'rq:v2:leases', unpack(leases))
redis.call('ZREM', 'rq:v2:leases', unpack(leases))
for _, lease in ipairs(leases) do
  local seq, number, id = string.match(lease, '^(%d+):([^/]*)/(.*)$')
  local key = 'rq:v2:n:' .. number
  redis.call('HMGET', key, seq)
  redis.call('HDEL', key, seq, '@' .. id)
  redis.call('HINCRBY', key, 's', -1)
end
return #leases
"""


@dataclass(frozen=True)
class NativeFloor:
    """The floor pass as module commands (benchmarks/native/native_floor.c): the same commands
    per message, each made through `RedisModule_Call` (as a script's `redis.call`), without the
    script interpreter around them."""

    ENQUEUE_BATCH: str = "command:rqfloor.enqueue"
    DEQUEUE: str = "command:rqfloor.dequeue"
    ACK: str = "command:rqfloor.ack"


@dataclass(frozen=True)
class NativeFloorOnKeys:
    """As `NativeFloor`, each per-message command's effect made on the key itself (the module
    key API) and replicated as that command: no command call per message."""

    ENQUEUE_BATCH: str = "command:rqfloor.enqueue_keys"
    DEQUEUE: str = "command:rqfloor.dequeue_keys"
    ACK: str = "command:rqfloor.ack_keys"


@dataclass(frozen=True)
class NativeFloorVerbatim:
    """As `NativeFloorOnKeys`, replicated as the module command itself, once per call (the
    replica runs it too), instead of one command per write."""

    ENQUEUE_BATCH: str = "command:rqfloor.enqueue_verbatim"
    DEQUEUE: str = "command:rqfloor.dequeue_verbatim"
    ACK: str = "command:rqfloor.ack_verbatim"


@dataclass(frozen=True)
class FloorScripts:
    """Stands where a scripts module does: the floor pass."""

    ENQUEUE_BATCH: str = _FLOOR_ENQUEUE.replace("COMMANDS", _ENQUEUE_COMMANDS["+ HMGET"])
    DEQUEUE: str = _FLOOR_DEQUEUE
    ACK: str = _FLOOR_ACK


console = Console(width=150)


@dataclass
class Costs:
    """µs of the primary's CPU per message, one entry per round; `replica`: the replica's for
    the whole pass (on two cores it competes with the primary and the client)."""

    enqueue: list[float] = field(default_factory=list)
    dequeue: list[float] = field(default_factory=list)
    ack: list[float] = field(default_factory=list)
    replica: list[float] = field(default_factory=list)


def scripts_module(rev: str | None) -> ModuleType:
    """`ratequeue/scripts.py` as of `rev` (None: this checkout), loaded on its own: it imports
    nothing of the project but `ratequeue.rates`, which is taken from this checkout."""
    if rev is None:
        source = (ROOT / "ratequeue" / "scripts.py").read_text()
    else:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:ratequeue/scripts.py"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp(prefix="rq-scripts-")) / "scripts.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"scripts_at_{rev or 'checkout'}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def message_lines(numbers: list[str], messages: int, round_: int) -> list[str]:
    return [
        f'{numbers[i % len(numbers)]}|{UNLIMITED_RATE}|1|m-{round_}-{i:08d}|"message body {i:08d}"'
        for i in range(messages)
    ]


def runner(conn: redis.Redis, code: str) -> Callable[..., Any]:
    """A script, or a module command (`command:NAME`), called as `runner(args=[...])`."""
    if code.startswith("command:"):
        name = code.removeprefix("command:")
        return lambda args: conn.execute_command(name, *args)
    return conn.register_script(code)


def enqueue_cost(conn: redis.Redis, script: str, lines: list[str], batch: int) -> float:
    enqueue = runner(conn, script)
    began = node_cpu(conn)
    for start in range(0, len(lines), batch):
        header = [EPOCH, DEDUP_WINDOW_S, 36_000, 1_000_000]
        enqueue(args=[*header, "\n".join(lines[start : start + batch])])
        conn.wait(1, 2000)
    return 1e6 * (node_cpu(conn) - began) / len(lines)


def one_round(
    conn: redis.Redis,
    replica: redis.Redis,
    module: ModuleType | FloorScripts | NativeFloor | NativeFloorOnKeys | NativeFloorVerbatim,
    lines: list[str],
    batch: int,
) -> Costs:
    conn.flushall()
    conn.set("rq:fence", EPOCH)
    conn.wait(1, 5000)
    replica_began = node_cpu(replica)
    costs = Costs(enqueue=[enqueue_cost(conn, module.ENQUEUE_BATCH, lines, batch)])
    dequeue, ack = runner(conn, module.DEQUEUE), runner(conn, module.ACK)
    dequeue_cpu = ack_cpu = 0.0
    delivered = empty_calls = 0
    while delivered < len(lines):
        began = node_cpu(conn)
        _, leased = dequeue(args=[batch, LEASE_MS, REQUEUE_LIMIT])
        leased_at = node_cpu(conn)
        receipts = leased[0::5]
        empty_calls = 0 if receipts else empty_calls + 1
        if empty_calls > 3:  # a call may find only numbers it then drops as empty, not three
            raise RuntimeError(f"the queue ran dry after {delivered} of {len(lines)} messages")
        acked = ack(args=[b" ".join(receipts), DEDUP_WINDOW_S])
        if acked != len(receipts):
            raise RuntimeError(f"acknowledged {acked} of {len(receipts)} leases")
        ack_cpu += node_cpu(conn) - leased_at
        dequeue_cpu += leased_at - began
        delivered += len(receipts)
    conn.wait(1, 5000)
    costs.replica.append(1e6 * (node_cpu(replica) - replica_began) / len(lines))
    costs.dequeue.append(1e6 * dequeue_cpu / len(lines))
    costs.ack.append(1e6 * ack_cpu / len(lines))
    return costs


def build_native_floor(into: Path) -> Path:
    """Compiles benchmarks/native/native_floor.c (a C compiler is needed: `cc`)."""
    source = ROOT / "benchmarks" / "native" / "native_floor.c"
    library = into / "native_floor.so"
    subprocess.run(
        ["cc", "-O2", "-Wall", "-fPIC", "-shared", "-o", str(library), str(source)], check=True
    )
    return library


def median_and_rounds(values: list[float]) -> str:
    if not values:
        return ""
    return f"{statistics.median(values):.2f} ({', '.join(f'{v:.1f}' for v in values)})"


app = typer.Typer(add_completion=False)


@app.command(help=__doc__.split("\n\n")[0] if __doc__ else None)
def main(
    rev: str = typer.Option("HEAD", help="git revision whose scripts are the baseline"),
    rounds: int = typer.Option(4, min=1, help="rounds, each side once per round"),
    messages: int = typer.Option(20_000, min=100, help="messages per round"),
    numbers: int = typer.Option(1_000, min=1, help="numbers the messages go to, in turn"),
    batch: int = typer.Option(500, min=1, help="messages per enqueue and per dequeue call"),
    floors: bool = typer.Option(True, help="also measure the floors"),
    busy: bool = typer.Option(False, "--busy", help="keep every core busy with a CPU hog"),
    native: bool = typer.Option(
        False, help="also the floor pass as module commands in C (needs `cc`)"
    ),
) -> None:
    sides: dict[
        str, ModuleType | FloorScripts | NativeFloor | NativeFloorOnKeys | NativeFloorVerbatim
    ] = {
        f"scripts at {rev}": scripts_module(rev),
        "this checkout": scripts_module(None),
    }
    if floors:
        sides["floor pass"] = FloorScripts()
    if native:
        sides["floor pass, module: command calls"] = NativeFloor()
        sides["floor pass, module: key API"] = NativeFloorOnKeys()
        sides["floor pass, module: key API, replicated once per call"] = NativeFloorVerbatim()
    enqueue_floors = {
        f"floor enqueue: {name}": _FLOOR_ENQUEUE.replace("COMMANDS", commands)
        for name, commands in _ENQUEUE_COMMANDS.items()
    } if floors else {}  # fmt: skip
    number_names = [f"+1555{i:07d}" for i in range(numbers)]
    results = {name: Costs() for name in [*sides, *enqueue_floors]}
    with tempfile.TemporaryDirectory(prefix="rq-script-cost-") as tmp:
        node_args = ("--loadmodule", str(build_native_floor(Path(tmp)))) if native else ()
        cluster = LocalCluster.start(Path(tmp), shards=1, replicas=1, node_args=node_args)
        try:
            conn = cluster.shards[0].primary.client(timeout=60)
            replica = cluster.shards[0].replicas[0].client(timeout=60)
            with cpu_hogs(every_core() if busy else 0):
                for round_ in range(rounds):
                    lines = message_lines(number_names, messages, round_)
                    for name, module in sides.items():
                        costs = one_round(conn, replica, module, lines, batch)
                        results[name].enqueue += costs.enqueue
                        results[name].dequeue += costs.dequeue
                        results[name].ack += costs.ack
                        results[name].replica += costs.replica
                    for name, script in enqueue_floors.items():
                        conn.flushall()
                        results[name].enqueue.append(enqueue_cost(conn, script, lines, batch))
        finally:
            cluster.stop()
    table = Table(title=f"primary CPU µs per message: median (rounds), {messages:,} messages "
                  f"over {numbers:,} numbers, {batch} per call")  # fmt: skip
    columns = ("scripts", "enqueue (+ WAIT)", "dequeue", "ack", "one pass", "replica, pass")
    for column in columns:
        table.add_column(column)
    for name, costs in results.items():
        total = sum(statistics.median(v) for v in (costs.enqueue, costs.dequeue, costs.ack) if v)
        table.add_row(
            name,
            median_and_rounds(costs.enqueue),
            median_and_rounds(costs.dequeue),
            median_and_rounds(costs.ack),
            f"{total:.2f}" if costs.dequeue else "",
            f"{statistics.median(costs.replica):.2f}" if costs.replica else "",
        )
    console.print(table)


if __name__ == "__main__":
    app()
