"""The failover benchmark's faults on a real redis-server (`benchmarks.primary_faults`): a
partition cuts the peer path only, and ending any fault leaves the process dead and no rule of
it behind, also when the run fails in between. Not for the measurements (the benchmark's own).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.primary_faults import Fault, PrimaryFault, network_faults
from chaos.faults.base import NodeTarget
from chaos.faults.local.backend import LocalFaultBackend
from chaos.processes import running
from ratequeue import local_cluster
from ratequeue.local_cluster import ShardNode
from tests.chaos.test_local_faults import iptables_save, needs_iptables, ping_seconds


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[ShardNode]:
    node = local_cluster.start_node("s0-primary", "primary", "s0", tmp_path)
    try:
        yield node
    finally:
        node.stop()


def fault_on(
    node: ShardNode, fault: Fault, network: LocalFaultBackend | None = None
) -> PrimaryFault:
    target = NodeTarget(name=node.name, role="primary", shard="s0", host=node.host,
                        port=node.port, peer_host=node.peer_host, pid=node.pid)  # fmt: skip
    return PrimaryFault(fault, node.pid, target, network, hosts=[node.peer_host])


def killed(node: ShardNode) -> bool:
    return node.process is not None and node.process.wait(timeout=5) == -signal.SIGKILL


@needs_iptables
def test_a_partition_cuts_the_peer_path_while_clients_still_reach_the_primary(
    primary: ShardNode,
) -> None:
    with network_faults(Fault.partition) as network:
        fault = fault_on(primary, Fault.partition, network)
        try:
            fault.inject()
            assert ping_seconds(primary.peer_host, primary.port, timeout=0.5) is None
            assert ping_seconds(primary.host, primary.port) is not None
        finally:
            fault.end()


@needs_iptables
def test_ending_a_partition_kills_the_primary_and_removes_its_rules(primary: ShardNode) -> None:
    with network_faults(Fault.partition) as network:
        assert network is not None
        fault = fault_on(primary, Fault.partition, network)
        fault.inject()
        assert network.rules()
        fault.end()
        assert network.rules() == []
        assert killed(primary) and not running(primary.pid)


@needs_iptables
def test_a_run_that_fails_while_a_path_is_cut_leaves_no_rule_behind(primary: ShardNode) -> None:
    with (
        pytest.raises(RuntimeError, match="the run failed"),
        network_faults(Fault.partition) as network,
    ):
        assert network is not None
        chain = network.iptables.chain
        fault_on(primary, Fault.partition, network).inject()
        raise RuntimeError("the run failed")
    assert chain not in iptables_save()


def test_ending_a_pause_kills_the_stopped_primary(primary: ShardNode) -> None:
    fault = fault_on(primary, Fault.pause)
    fault.inject()
    assert ping_seconds(primary.host, primary.port, timeout=0.5) is None
    fault.end()
    assert killed(primary)
