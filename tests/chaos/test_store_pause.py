"""A `pause` step on a store node, as the chaos runner injects it (`FaultPhase` on the local
backend), on real etcd processes: the leader the step picks is SIGSTOPped, answers nothing
while the others elect a leader of their own and go on writing, and once rolled back (SIGCONT)
answers again and catches up (issue 10: the chaos runner's faults for the store itself).

Not for: killing or cutting off a store node (tests/chaos/test_store_cutoff.py, the scenarios).
"""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

from chaos.experiments import FaultStep, Selector
from chaos.fault_phase import FaultPhase
from chaos.faults.local.backend import LocalFaultBackend
from chaos.targets import from_testbed
from chaos.testbed import TestbedNode, TestbedState
from common.etcd_client import EtcdClient, EtcdClientSettings
from common.etcd_processes import EtcdCluster
from tests.chaos.test_local_faults import wait_until


def process_state(pid: int) -> str:
    """The one-letter state in /proc (T: stopped by a signal)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def put(endpoints: list[str], key: str) -> None:
    async with EtcdClient(EtcdClientSettings(endpoints=endpoints, call_timeout=5.0)) as client:
        await client.put(key, b"written while it was paused")


async def read(endpoint: str, key: str) -> bytes | None:
    async with EtcdClient(EtcdClientSettings(endpoints=[endpoint], call_timeout=2.0)) as client:
        found = await client.get(key)
        return None if found is None else found.value


def test_a_pause_step_on_the_etcd_leader_stops_it_until_the_rollback(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    leader = etcd.wait_for_leader()
    nodes = [TestbedNode(name=m.name, role="etcd", host="127.0.0.1", port=m.client_port,
                         pid=m.pid, command=["etcd"]) for m in etcd.members]  # fmt: skip
    state = TestbedState(api="http://127.0.0.1:1", control="redis://127.0.0.1:1/0", nodes=nodes,
                         etcd_endpoints=",".join(etcd.endpoints))  # fmt: skip
    phase = FaultPhase(from_testbed(state, tmp_path), None, rng=random.Random(0),  # type: ignore[arg-type]
                       stop=threading.Event(), say=lambda _: None,
                       backends={"local": LocalFaultBackend()})  # fmt: skip
    step = FaultStep(action="pause", target=Selector(role="etcd_member", member="leader"))

    [fault] = phase.inject_step(step, "s0", [])
    try:
        assert fault.target.pid == leader.pid and process_state(leader.pid) == "T"
        assert leader.status() is None
        etcd.wait_for_leader(other_than=leader)
        others = [m.client_url for m in etcd.members if m is not leader]
        asyncio.run(put(others, "/paused/probe"))
    finally:
        fault.rollback()

    assert process_state(leader.pid) != "T"
    written = b"written while it was paused"
    wait_until(lambda: asyncio.run(read(leader.client_url, "/paused/probe")) == written,
               timeout=10)  # fmt: skip
