"""`ratequeue-chaos testbed up --control etcd`, end to end: a three-member etcd cluster beside the
Redis that carries the event stream, the topology moved there, the API routing by it and the
controllers deciding on it; `down` stops the members with the rest."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest
import redis

from chaos import testbed
from chaos.load import BackgroundLoad, LoadProfile
from chaos.testbed import running_testbed
from detection.events import Event
from lazarus_lite.coordination.opening import opened_coordination_store
from ratequeue.topology import TOPOLOGY_KEY, Topology
from tests.e2e.support import LOAD, cli_testbed, failed_over, send, wait_for


async def _topology_and_balancer(state: testbed.TestbedState) -> tuple[Topology | None, list]:
    async with opened_coordination_store(state.store_address()) as store:
        return await store.topology.load(), list(await store.services.members("ratequeue-api"))


async def _sensor_heartbeat(state: testbed.TestbedState, sensor: str) -> Event | None:
    async with opened_coordination_store(state.store_address()) as store:
        heartbeat = await store.sensors.heartbeat(sensor)
    return heartbeat if heartbeat is not None and heartbeat.data.get("primary") else None


@pytest.mark.slow  # `up` starts three etcd members besides the redis nodes and services
def test_a_testbed_on_etcd_keeps_its_topology_there_and_down_stops_the_members(
    tmp_path: Path,
) -> None:
    with cli_testbed(tmp_path / "bed", "--shards", "1", "--replicas", "1",
                          "--control", "etcd", "--no-supervise") as state:  # fmt: skip
        members = [node for node in state.nodes if node.role == "etcd"]
        assert len(members) == 3 and all(testbed.process_alive(m) for m in members)
        assert state.etcd_endpoints is not None

        topology, balanced = asyncio.run(_topology_and_balancer(state))
        assert topology is not None and balanced == [state.api]
        with redis.Redis.from_url(state.control) as control:
            assert not control.exists(TOPOLOGY_KEY)
        answer = httpx.post(f"{state.api}/v1/numbers/+14155550100/messages",
                            json={"id": "m-1", "body": "hello"}, timeout=10)  # fmt: skip
        assert answer.status_code == 201, answer.text
        for url in state.lazarus:
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        # The sensor reads the map in etcd: it watches the primary listed there.
        heartbeat = wait_for("the sensor's heartbeat naming its primary",
                             lambda: asyncio.run(_sensor_heartbeat(state, "sensor-s0-replica1")),
                             timeout=30)  # fmt: skip
        assert heartbeat.data["primary"] == "s0-primary" and heartbeat.data["ok"] is True


def etcd_leader(state: testbed.TestbedState) -> str:
    """The name of the etcd member that leads, as the members' status says."""
    members = [node for node in state.nodes if node.role == "etcd"]
    ids = {}
    leader = "0"
    for member in members:
        status = httpx.post(f"http://{member.host}:{member.port}/v3/maintenance/status",
                            json={}, timeout=2).json()  # fmt: skip
        ids[str(status["header"]["member_id"])] = member.name
        leader = str(status.get("leader", leader))
    return ids[leader]


@pytest.mark.slow  # a whole testbed on etcd, under load, through a failover
@pytest.mark.parametrize(
    "etcd_leader_killed_first", [False, True], ids=["etcd-whole", "etcd-leader-dead"]
)
def test_on_etcd_a_killed_primary_is_replaced_and_no_acknowledged_message_is_lost(
    tmp_path: Path, etcd_leader_killed_first: bool
) -> None:
    with running_testbed(tmp_path / "tb", shards=2, replicas=2, control="etcd") as state:
        load = BackgroundLoad(state.api, LoadProfile(**LOAD)).start()
        time.sleep(2)
        if etcd_leader_killed_first:
            send(state, etcd_leader(state), signal.SIGKILL)
            time.sleep(1)
        killed_at = time.time()
        send(state, "s0-primary", signal.SIGKILL)
        after = wait_for("s0 to fail over", lambda: failed_over(state, "s0", "s0-primary"))
        first_ack = load.ledger.first_ack_after
        wait_for("an acknowledged write on s0 after the kill",
                 lambda: first_ack(killed_at + 0.5, "s0"), timeout=20)  # fmt: skip
        time.sleep(2)
        ledger = load.join()
    assert ledger.lost() == set()
    assert len(ledger.acknowledged) > 100
    assert after.shard("s0").forensics[0].name == "s0-primary"
