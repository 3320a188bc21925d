"""What the soak checks on etcd (`soak --control etcd`), against three real etcd members: the
census counts the keys without a lease by family with their bytes, and leaves out what a lease
bounds and the sensor registry (bounded by age); the settle's member check says nothing while
every member answers with one leader, and names a member that does not answer.

Not for: the soak's cycles on staging (tests/test_staging_soak.py) or the growth judge
(tests/unit/test_soak_growth.py)."""

from __future__ import annotations

import asyncio

from chaos.soak_growth import take_etcd_census
from chaos.store_members import members_not_serving
from common.etcd_client import EtcdClient, EtcdClientSettings
from common.etcd_processes import EtcdCluster
from lazarus_lite.coordination import etcd_keys


async def _put(endpoints: list[str], key: str, value: bytes, *, leased: bool = False) -> None:
    async with EtcdClient(EtcdClientSettings(endpoints=endpoints)) as client:
        lease = (await client.grant_lease(600)).id if leased else 0
        await client.put(key, value, lease=lease)


def test_the_census_counts_keys_without_a_lease_by_family_and_their_bytes(
    etcd: EtcdCluster,
) -> None:
    for workflow in ("wf-1", "wf-2"):
        asyncio.run(_put(etcd.endpoints, etcd_keys.workflow_record(workflow), b"x" * 100))
    families, family_bytes = asyncio.run(take_etcd_census(etcd.endpoints))
    key = etcd_keys.workflow_record("wf-1")
    assert families["/lazarus/wf/*/record"] == 2
    assert family_bytes["/lazarus/wf/*/record"] == 2 * (len(key) + 100)


def test_the_census_leaves_out_a_key_under_a_lease_and_the_sensor_registry(
    etcd: EtcdCluster,
) -> None:
    asyncio.run(_put(etcd.endpoints, etcd_keys.lock("shard", "s0"), b"holder", leased=True))
    asyncio.run(_put(etcd.endpoints, f"{etcd_keys.SENSORS}sensor-s0-replica-e7", b"{}"))
    families, _ = asyncio.run(take_etcd_census(etcd.endpoints))
    assert not [f for f in families if f.startswith(("/lazarus/lock/", etcd_keys.SENSORS))]


def test_members_serving_with_one_leader_leave_the_settle_nothing_to_wait_for(
    etcd: EtcdCluster,
) -> None:
    assert members_not_serving(etcd.endpoints) == []


def test_a_member_that_does_not_answer_is_named(etcd: EtcdCluster) -> None:
    paused = etcd.members[1]
    paused.pause()
    assert members_not_serving(etcd.endpoints) == [
        f"etcd member {paused.client_url} does not answer"
    ]
