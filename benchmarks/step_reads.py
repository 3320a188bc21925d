"""What a state-changing workflow step's reads of the coordination store cost: the kill switches
and the topology as one read (`CoordinationStore.step_reads`: one read-only etcd transaction, one
MULTI on Redis) against the two reads a step made before (`flags.kill_switches()`, then
`topology.load()`), on a three-member etcd cluster and a Redis control store on loopback,
alternating the two ways call by call so the machine's load falls on both alike. Prints p50 and
p95 per way and backend, and the ratio of the p50s. Run by hand from the repository root:
`python -m benchmarks.step_reads [--calls 600]`.

Not for: the failover as a whole (failover_recovery.py), or CI (timings depend on the load).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import typer

from common.etcd_processes import start_etcd_cluster
from lazarus_lite.coordination.interface import CoordinationStore
from lazarus_lite.coordination.opening import StoreAddress, open_coordination_store
from ratequeue.local_cluster import start_node
from ratequeue.topology import NodeRef, Shard, Topology, even_slot_ranges

Timed = Callable[[], Awaitable[object]]


def a_topology() -> Topology:
    shards = []
    for index, slots in enumerate(even_slot_ranges(3)):
        nodes = [NodeRef(name=f"s{index}-{role}", host="127.0.0.1", port=7000 + 10 * index + n)
                 for n, role in enumerate(("primary", "replica1", "replica2"))]  # fmt: skip
        shards.append(
            Shard(id=f"s{index}", slots=slots, epoch=1, primary=nodes[0], replicas=nodes[1:])
        )
    return Topology(epoch=1, shards=shards)


async def alternate(ways: dict[str, Timed], calls: int) -> dict[str, list[float]]:
    """Each way `calls` times, taking turns; milliseconds per call."""
    taken: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(calls):
        for name, way in ways.items():
            started = time.perf_counter()
            await way()
            taken[name].append((time.perf_counter() - started) * 1000)
    return taken


async def measure(store: CoordinationStore, calls: int) -> dict[str, list[float]]:
    await store.topology.compare_and_set(0, a_topology())
    await store.flags.engage_kill_switch("scaling", {"by": "benchmark"})

    async def two_reads() -> object:
        return (await store.flags.kill_switches(), await store.topology.load())

    ways: dict[str, Timed] = {"two reads": two_reads, "step_reads": store.step_reads}
    await alternate(ways, 20)  # connections opened, leader found
    return await alternate(ways, calls)


def main(calls: int = typer.Option(600, min=10, help="calls per way and backend")) -> None:
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="step-reads-")))
        # Each stopped however the next start or the measurement ends.
        control = start_node("control", "control", None, work / "control")
        stack.callback(control.stop)
        cluster = start_etcd_cluster(work / "etcd")
        stack.callback(cluster.stop)
        url = f"redis://{control.host}:{control.port}/0"
        addresses = {
            "redis": StoreAddress(control_url=url),
            "etcd": StoreAddress.of(url, ",".join(cluster.endpoints)),
        }
        for backend, address in addresses.items():
            store = open_coordination_store(address)

            async def run(store: CoordinationStore = store) -> dict[str, list[float]]:
                try:
                    return await measure(store, calls)
                finally:
                    await store.aclose()

            taken = asyncio.run(run())
            p50 = {name: statistics.median(ms) for name, ms in taken.items()}
            for name, ms in taken.items():
                p95 = statistics.quantiles(ms, n=20)[18]
                print(f"{backend:5} {name:10} p50 {p50[name]:6.2f} ms  p95 {p95:6.2f} ms")
            print(f"{backend:5} step_reads / two reads p50 = "
                  f"{p50['step_reads'] / p50['two reads']:.2f}")  # fmt: skip


if __name__ == "__main__":
    typer.run(main)
