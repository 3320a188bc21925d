"""`ratequeue topology-init` and `ratequeue topology` with the map in etcd
(`--topology-backend etcd --etcd-endpoints ...`, or the same as RATEQUEUE_* environment
variables), against a real three-member etcd cluster and real redis-server nodes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from common.etcd_client import EtcdClient, EtcdClientSettings
from common.etcd_processes import EtcdCluster
from common.redis_processes import RedisProcess
from ratequeue.cli import app
from ratequeue.etcd_topology import EtcdTopologyStore
from ratequeue.local_cluster import start_node
from ratequeue.topology import FENCE_KEY, TOPOLOGY_KEY, Topology


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess, RedisProcess]]:
    """A control store and one shard of two parked nodes (no topology yet)."""
    started = [start_node("control", "control", None, tmp_path),
               start_node("s0-primary", "primary", "s0", tmp_path),
               start_node("s0-replica1", "replica", "s0", tmp_path)]  # fmt: skip
    try:
        yield started[0], started[1], started[2]
    finally:
        for node in reversed(started):
            node.stop()


@pytest.fixture
def empty_etcd(etcd: EtcdCluster) -> EtcdCluster:
    """The module's etcd cluster without what an earlier test stored."""

    async def clear() -> None:
        async with EtcdClient(EtcdClientSettings(endpoints=etcd.endpoints)) as client:
            await client.delete("/", prefix=True)

    asyncio.run(clear())
    return etcd


def in_etcd(etcd: EtcdCluster) -> Topology | None:
    async def load() -> Topology | None:
        async with EtcdClient(EtcdClientSettings(endpoints=etcd.endpoints)) as client:
            return await EtcdTopologyStore(client).load()

    return asyncio.run(load())


def ratequeue(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def on_etcd(etcd: EtcdCluster) -> list[str]:
    return ["--topology-backend", "etcd", "--etcd-endpoints", ",".join(etcd.endpoints)]


def test_topology_init_on_etcd_writes_epoch_1_there_once(
    nodes: tuple[RedisProcess, RedisProcess, RedisProcess], empty_etcd: EtcdCluster
) -> None:
    control, primary, replica = nodes
    spec = f"s0=127.0.0.1:{primary.port},127.0.0.1:{replica.port}"
    init = ["topology-init", "--control", control.url, *on_etcd(empty_etcd), "--shard", spec,
            "--peer-host", "127.0.0.2", "--wait", "15"]  # fmt: skip
    first = ratequeue(*init)
    assert first.exit_code == 0, first.output
    assert "published topology epoch 1" in first.output
    stored = in_etcd(empty_etcd)
    assert stored is not None and stored.epoch == 1
    assert stored.shard("s0").primary.port == primary.port
    assert stored.shard("s0").lineage is not None  # the second write (after the sync) landed
    with control.client() as conn:
        assert conn.get(TOPOLOGY_KEY) is None  # nothing in the control store
    with primary.client() as conn:
        assert conn.get(FENCE_KEY) == b"1"
    assert replica.replication()["master_link_status"] == "up"

    again = ratequeue(*init)
    assert again.exit_code == 0, again.output
    assert "already stored (epoch 1)" in again.output


def test_topology_reads_the_map_in_etcd_from_environment_variables(
    nodes: tuple[RedisProcess, RedisProcess, RedisProcess], empty_etcd: EtcdCluster
) -> None:
    control, primary, replica = nodes
    env = {"RATEQUEUE_CONTROL_URL": control.url, "RATEQUEUE_TOPOLOGY_BACKEND": "etcd",
           "RATEQUEUE_ETCD_ENDPOINTS": ",".join(empty_etcd.endpoints)}  # fmt: skip
    spec = f"s0=127.0.0.1:{primary.port},127.0.0.1:{replica.port}"
    assert ratequeue("topology-init", "--shard", spec, env=env).exit_code == 0

    shown = ratequeue("topology", env=env)
    assert shown.exit_code == 0, shown.output
    assert Topology.model_validate(json.loads(shown.output)) == in_etcd(empty_etcd)


def test_topology_on_etcd_answers_with_one_member_killed(
    nodes: tuple[RedisProcess, RedisProcess, RedisProcess], empty_etcd: EtcdCluster
) -> None:
    control, primary, replica = nodes
    spec = f"s0=127.0.0.1:{primary.port},127.0.0.1:{replica.port}"
    assert ratequeue("topology-init", "--control", control.url, *on_etcd(empty_etcd),
                     "--shard", spec).exit_code == 0  # fmt: skip
    empty_etcd.members[0].kill()

    shown = ratequeue("topology", "--control", control.url, *on_etcd(empty_etcd))
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["epoch"] == 1


def test_topology_says_when_etcd_holds_no_map(empty_etcd: EtcdCluster) -> None:
    shown = ratequeue("topology", "--control", "redis://127.0.0.1:1/0", *on_etcd(empty_etcd))
    assert shown.exit_code == 1
    assert "no topology in the etcd store" in shown.output


@pytest.mark.parametrize("command", [["topology"], ["topology-init", "--shard", "s0=a:1"]])
def test_an_etcd_backend_without_endpoints_is_refused_naming_the_setting(
    command: list[str],
) -> None:
    refused = ratequeue(*command, "--control", "redis://127.0.0.1:1/0", "--topology-backend",
                        "etcd")  # fmt: skip
    assert refused.exit_code == 2
    assert (
        "setting 'etcd_endpoints' (--etcd-endpoints or RATEQUEUE_ETCD_ENDPOINTS): required "
        "with an etcd backend" in refused.output
    )


def test_an_unknown_topology_backend_is_refused_naming_the_setting() -> None:
    refused = ratequeue("topology", "--control", "redis://127.0.0.1:1/0", "--topology-backend",
                        "zookeeper")  # fmt: skip
    assert refused.exit_code == 2
    assert "topology_backend" in refused.output
