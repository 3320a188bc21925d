"""The coordination store's contract, one behaviour a test, run against every backend on its
real server: `store` is parametrized by backend, so a new backend passes the same behaviours by
adding one parameter (and the fixture branch that opens it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from common.errors import InvalidSetting
from common.etcd_processes import EtcdCluster
from common.redis_processes import RedisProcess, free_port
from detection.events import Event, new_event
from lazarus_lite.coordination.interface import SENSOR_HEARTBEAT_RETENTION, CoordinationStore
from lazarus_lite.coordination.opening import StoreAddress, open_coordination_store
from lazarus_lite.coordination.redis_backend import (
    AUDIT_RETENTION_SECONDS,
    WORKFLOW_RETENTION_SECONDS,
)
from lazarus_lite.errors import LockBusy, LockLost, OwnershipLost, WorkflowStartPending
from lazarus_lite.workflow.definition import WorkflowDefinition
from lazarus_lite.workflow.records import StepRecord, WorkflowRecord
from ratequeue.errors import EpochConflict
from ratequeue.local_cluster import start_node
from ratequeue.topology import NodeRef, Shard, Topology, even_slot_ranges

BACKENDS = ["redis", "etcd"]


@pytest.fixture(scope="module")
def redis_control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    node = start_node("control", "control", None, tmp_path_factory.mktemp("coordination"))
    yield node
    node.stop()


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CoordinationStore]:
    """An empty store of the backend under test."""
    if request.param == "redis":
        control: RedisProcess = request.getfixturevalue("redis_control")
        opened = open_coordination_store(
            StoreAddress(control_url=f"redis://{control.host}:{control.port}/0")
        )
        await opened.control.flushall()  # type: ignore[attr-defined]
    if request.param == "etcd":
        cluster: EtcdCluster = request.getfixturevalue("etcd")
        control = request.getfixturevalue("redis_control")
        opened = open_coordination_store(
            StoreAddress(
                control_url=f"redis://{control.host}:{control.port}/0",
                coordination_backend="etcd",
                etcd_endpoints=",".join(cluster.endpoints),
            )
        )
        await opened.client.delete("/", prefix=True)  # type: ignore[attr-defined]
        await opened.records_connection.flushall()  # type: ignore[attr-defined]
    yield opened
    await opened.aclose()


@pytest.fixture(params=BACKENDS)
async def unreachable_store(request: pytest.FixtureRequest) -> AsyncIterator[CoordinationStore]:
    """A store of the backend under test whose server is not there."""
    if request.param == "redis":
        nobody = f"redis://127.0.0.1:{free_port(('127.0.0.1',))}/0"
        opened = open_coordination_store(StoreAddress(control_url=nobody), timeout=0.5)
    if request.param == "etcd":
        ports = [free_port(("127.0.0.1",)) for _ in range(3)]
        address = StoreAddress(
            control_url=f"redis://127.0.0.1:{free_port(('127.0.0.1',))}/0",
            coordination_backend="etcd",
            etcd_endpoints=",".join(f"http://127.0.0.1:{port}" for port in ports),
        )
        opened = open_coordination_store(address, timeout=0.5)
    yield opened
    await opened.aclose()


async def eventually(what: str, probe: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout:g} s")


def a_workflow(
    workflow_id: str, status: str = "running", event_id: str | None = None
) -> WorkflowRecord:
    definition = WorkflowDefinition.model_validate(
        {"name": "w", "steps": [{"name": "a", "run": "lock.acquire"}]}
    )
    return WorkflowRecord(
        id=workflow_id,
        definition=definition,
        inputs={},
        event_id=event_id,
        status=status,  # type: ignore[arg-type]
        created_at=time.time(),
        deadline=time.time() + 60,
        steps={"a": StepRecord()},
    )


def a_topology(epoch: int, primary: str = "p") -> Topology:
    (slots,) = even_slot_ranges(1)
    node = NodeRef(name=primary, host="127.0.0.1", port=7000)
    return Topology(epoch=epoch, shards=[Shard(id="s0", slots=slots, epoch=epoch, primary=node)])


def a_heartbeat(source: str) -> Event:
    return new_event("SensorHeartbeat", environment="dev", region="local", service="ratequeue",
                     host="127.0.0.1:7000", source=source)  # fmt: skip


# -- the constructor ----------------------------------------------------------------------------
def test_an_unknown_backend_is_refused_naming_the_setting() -> None:
    class Settings:
        control_url = "redis://127.0.0.1:1/0"
        coordination_backend = "zookeeper"

    with pytest.raises(InvalidSetting, match=r"coordination_backend.*zookeeper"):
        open_coordination_store(Settings())


@pytest.mark.parametrize(
    "endpoints", [None, "", " , ", "127.0.0.1:2379", "http://127.0.0.1:2379,ftp://h:1"]
)
def test_an_etcd_backend_without_usable_endpoints_is_refused_naming_the_setting(
    endpoints: str | None,
) -> None:
    address = StoreAddress(
        control_url="redis://127.0.0.1:1/0", coordination_backend="etcd", etcd_endpoints=endpoints
    )
    with pytest.raises(InvalidSetting, match=r"^etcd_endpoints: "):
        open_coordination_store(address)


async def test_the_store_answers_a_ping(store: CoordinationStore) -> None:
    assert await store.ping()


async def test_a_store_that_cannot_answer_raises_its_unavailable_error(
    unreachable_store: CoordinationStore,
) -> None:
    with pytest.raises(unreachable_store.unavailable):
        await unreachable_store.ping()


# -- locks ----------------------------------------------------------------------------------------
async def test_a_held_lock_is_refused_to_another_holder(store: CoordinationStore) -> None:
    await store.locks.acquire("shard", "rq/s0", "wf-a")
    with pytest.raises(LockBusy):
        await store.locks.acquire("shard", "rq/s0", "wf-b")


async def test_the_holder_taking_its_lock_again_keeps_its_token(store: CoordinationStore) -> None:
    first = await store.locks.acquire("shard", "rq/s0", "wf-a")
    again = await store.locks.acquire("shard", "rq/s0", "wf-a")
    assert again.token == first.token


async def test_fencing_tokens_strictly_increase_across_grants(store: CoordinationStore) -> None:
    first = await store.locks.acquire("shard", "rq/s0", "wf-a")
    await store.locks.release(first)
    second = await store.locks.acquire("shard", "rq/s0", "wf-b")
    other = await store.locks.acquire("host", "h1", "wf-c")
    assert first.token < second.token < other.token


async def test_only_the_holder_with_its_token_renews(store: CoordinationStore) -> None:
    held = await store.locks.acquire("shard", "rq/s0", "wf-a")
    stale = type(held)(held.key, held.holder, held.token - 1)
    assert await store.locks.renew(held)
    assert not await store.locks.renew(stale)
    with pytest.raises(LockLost):
        await store.locks.assert_held(stale)


async def test_only_the_holder_releases(store: CoordinationStore) -> None:
    held = await store.locks.acquire("shard", "rq/s0", "wf-a")
    stranger = type(held)(held.key, "wf-b", held.token)
    assert not await store.locks.release(stranger)
    assert await store.locks.holder("shard", "rq/s0") == held.value
    assert await store.locks.release(held)
    assert await store.locks.holder("shard", "rq/s0") is None


async def test_an_expired_lock_goes_to_the_next_holder_with_a_higher_token(
    store: CoordinationStore,
) -> None:
    store.locks.ttl_ms = 300
    lapsed = await store.locks.acquire("shard", "rq/s0", "wf-a")
    await eventually("the lock's expiry", lambda: _is_free(store))
    taken = await store.locks.acquire("shard", "rq/s0", "wf-b")
    assert taken.token > lapsed.token
    with pytest.raises(LockLost):
        await store.locks.assert_held(lapsed)


async def _is_free(store: CoordinationStore) -> bool:
    return await store.locks.holder("shard", "rq/s0") is None


# -- workflow records and owner leases -------------------------------------------------------------
async def test_a_save_by_the_lease_owner_is_kept(store: CoordinationStore) -> None:
    assert await store.workflows.claim("wf-1", "n1")
    await store.workflows.save(a_workflow("wf-1"), {"kind": "started"}, owner="n1")
    loaded = await store.workflows.load("wf-1")
    assert loaded is not None and loaded.id == "wf-1"
    assert [e["kind"] for e in await store.workflows.history("wf-1")] == ["started"]


async def test_a_save_appends_its_entries_to_the_history_in_their_order(
    store: CoordinationStore,
) -> None:
    await store.workflows.save(a_workflow("wf-1"), {"kind": "first"}, owner=None)
    await store.workflows.save(a_workflow("wf-1"), owner=None)
    many = [{"kind": f"entry-{number}"} for number in range(12)]  # 10 and 11 sort after 9
    await store.workflows.save(a_workflow("wf-1"), *many, owner=None)
    kinds = [e["kind"] for e in await store.workflows.history("wf-1")]
    assert kinds == ["first", *(entry["kind"] for entry in many)]


async def test_a_history_entry_keeps_its_own_time(store: CoordinationStore) -> None:
    await store.workflows.save(a_workflow("wf-1"), {"kind": "a", "at": 5.0}, {"kind": "b"},
                               owner=None)  # fmt: skip
    first, second = await store.workflows.history("wf-1")
    assert first["at"] == 5.0
    assert second["at"] == pytest.approx(time.time(), abs=5)


async def test_a_save_by_a_node_without_the_lease_is_refused_and_changes_nothing(
    store: CoordinationStore,
) -> None:
    assert await store.workflows.claim("wf-1", "n1")
    with pytest.raises(OwnershipLost):
        await store.workflows.save(a_workflow("wf-1"), {"kind": "started"}, owner="n2")
    assert await store.workflows.load("wf-1") is None
    assert await store.workflows.history("wf-1") == []


async def test_the_owner_lease_is_exclusive_until_its_owner_lets_go(
    store: CoordinationStore,
) -> None:
    assert await store.workflows.claim("wf-1", "n1")
    assert not await store.workflows.claim("wf-1", "n2")
    assert not await store.workflows.renew("wf-1", "n2")
    await store.workflows.disown("wf-1", "n2")  # not n2's to drop
    assert await store.workflows.owner("wf-1") == "n1"
    await store.workflows.disown("wf-1", "n1")
    assert await store.workflows.claim("wf-1", "n2")


async def test_running_workflows_are_active_until_they_finish(store: CoordinationStore) -> None:
    await store.workflows.save(a_workflow("wf-1"), owner=None)
    await store.workflows.save(a_workflow("wf-2"), owner=None)
    assert await store.workflows.active() == ["wf-1", "wf-2"]
    await store.workflows.save(a_workflow("wf-1", status="succeeded"), owner=None)
    assert await store.workflows.active() == ["wf-2"]


async def test_an_event_starts_one_workflow(store: CoordinationStore) -> None:
    assert await store.workflows.bind_event("ev-1", "wf-1") is None
    assert await store.workflows.bind_event("ev-1", "wf-2") == "wf-1"


async def test_an_events_binding_is_replaced_only_while_it_names_the_workflow_it_replaces(
    store: CoordinationStore,
) -> None:
    assert await store.workflows.bind_event("ev-1", "wf-1") is None
    assert not await store.workflows.rebind_event("ev-1", "wf-2", replacing="wf-other")
    assert await store.workflows.bind_event("ev-1", "wf-probe") == "wf-1"
    assert await store.workflows.rebind_event("ev-1", "wf-3", replacing="wf-1")
    assert await store.workflows.bind_event("ev-1", "wf-probe") == "wf-3"


async def test_an_events_binding_to_a_saved_workflow_is_never_replaced(
    store: CoordinationStore,
) -> None:
    assert await store.workflows.bind_event("ev-1", "wf-1") is None
    await store.workflows.save(a_workflow("wf-1", event_id="ev-1"), owner=None)
    assert not await store.workflows.rebind_event("ev-1", "wf-2", replacing="wf-1")
    assert await store.workflows.bind_event("ev-1", "wf-probe") == "wf-1"


async def test_a_save_while_bound_is_refused_once_the_events_binding_names_another_workflow(
    store: CoordinationStore,
) -> None:
    assert await store.workflows.bind_event("ev-1", "wf-1") is None
    assert await store.workflows.rebind_event("ev-1", "wf-2", replacing="wf-1")
    with pytest.raises(WorkflowStartPending, match="ev-1"):
        await store.workflows.save(
            a_workflow("wf-1", event_id="ev-1"), owner=None, new=True, while_bound=True
        )
    assert await store.workflows.load("wf-1") is None
    assert await store.workflows.active() == []


async def test_a_save_while_bound_is_made_while_the_events_binding_names_the_workflow(
    store: CoordinationStore,
) -> None:
    assert await store.workflows.bind_event("ev-1", "wf-1") is None
    saved = a_workflow("wf-1", event_id="ev-1")
    await store.workflows.save(saved, owner=None, new=True, while_bound=True)
    assert await store.workflows.load("wf-1") == saved


async def test_a_save_while_bound_of_a_workflow_without_an_event_is_refused_naming_it(
    store: CoordinationStore,
) -> None:
    with pytest.raises(ValueError, match="while_bound: workflow wf-1 has no event_id"):
        await store.workflows.save(a_workflow("wf-1"), owner=None, while_bound=True)
    assert await store.workflows.load("wf-1") is None


async def test_an_events_binding_is_dropped_only_while_it_names_the_workflow_given(
    store: CoordinationStore,
) -> None:
    assert await store.workflows.bind_event("ev-1", "wf-1") is None
    await store.workflows.unbind_event("ev-1", "wf-other")
    assert await store.workflows.bind_event("ev-1", "wf-2") == "wf-1"
    await store.workflows.unbind_event("ev-1", "wf-1")
    assert await store.workflows.bind_event("ev-1", "wf-3") is None


# -- incident claims -------------------------------------------------------------------------------
async def test_the_first_claim_of_an_incident_holds_it(store: CoordinationStore) -> None:
    assert await store.incidents.claim("RedisMasterDown", "k", "ev-1", ttl=60)
    assert not await store.incidents.claim("RedisMasterDown", "k", "ev-2", ttl=60)
    assert await store.incidents.holder("RedisMasterDown", "k") == "ev-1"
    left = await store.incidents.held_for("RedisMasterDown", "k")
    assert left is not None and 0 < left <= 60


async def test_a_claim_expires(store: CoordinationStore) -> None:
    assert await store.incidents.claim("RedisMasterDown", "k", "ev-1", ttl=1)

    async def released() -> bool:
        return await store.incidents.holder("RedisMasterDown", "k") is None

    await eventually("the claim's expiry", released)
    assert await store.incidents.claim("RedisMasterDown", "k", "ev-2", ttl=60)


async def test_only_an_existing_claim_is_taken_over(store: CoordinationStore) -> None:
    assert not await store.incidents.take_over("RedisMasterDown", "k", "ev-1", "ev-2", ttl=60)
    await store.incidents.claim("RedisMasterDown", "k", "ev-1", ttl=60)
    assert await store.incidents.take_over("RedisMasterDown", "k", "ev-1", "ev-2", ttl=60)
    assert await store.incidents.holder("RedisMasterDown", "k") == "ev-2"


async def test_of_two_events_taking_over_one_claim_only_one_wins(store: CoordinationStore) -> None:
    await store.incidents.claim("RedisMasterDown", "k", "ev-1", ttl=60)
    assert await store.incidents.take_over("RedisMasterDown", "k", "ev-1", "ev-2", ttl=60)
    assert not await store.incidents.take_over("RedisMasterDown", "k", "ev-1", "ev-3", ttl=60)
    assert await store.incidents.holder("RedisMasterDown", "k") == "ev-2"


async def test_a_released_claim_is_free(store: CoordinationStore) -> None:
    await store.incidents.claim("RedisMasterDown", "k", "ev-1", ttl=60)
    assert await store.incidents.release("RedisMasterDown", "k", held_by="ev-1")
    assert await store.incidents.held_for("RedisMasterDown", "k") is None


async def test_a_claim_taken_over_is_not_released_by_its_former_holder(
    store: CoordinationStore,
) -> None:
    await store.incidents.claim("RedisMasterDown", "k", "ev-1", ttl=60)
    await store.incidents.take_over("RedisMasterDown", "k", "ev-1", "ev-2", ttl=60)
    assert not await store.incidents.release("RedisMasterDown", "k", held_by="ev-1")
    assert await store.incidents.holder("RedisMasterDown", "k") == "ev-2"


async def test_the_recovered_mark_is_taken_once(store: CoordinationStore) -> None:
    await store.incidents.mark_recovered("RedisMasterDown", "k", ttl=60)
    assert await store.incidents.take_recovered("RedisMasterDown", "k")
    assert not await store.incidents.take_recovered("RedisMasterDown", "k")


# -- sliding windows and flags ---------------------------------------------------------------------
async def test_a_window_counts_distinct_members(store: CoordinationStore) -> None:
    for member in ("a", "b", "a"):
        count = await store.windows.record("failing_services", "eu", member, window=60)
    assert count == 2
    assert await store.windows.members("failing_services", "eu", window=60) == ["a", "b"]


async def test_windows_of_one_kind_are_listed_by_name_apart_from_the_other_kind(
    store: CoordinationStore,
) -> None:
    await store.windows.record("failing_services", "eu", "a", window=60)
    await store.windows.record("failing_services", "us", "a", window=60)
    await store.windows.record("service_incidents", "ratequeue", "k", window=60)
    assert await store.windows.names("failing_services") == ["eu", "us"]
    assert await store.windows.names("service_incidents") == ["ratequeue"]


async def test_members_older_than_the_window_are_not_counted(store: CoordinationStore) -> None:
    await store.windows.record("service_incidents", "ratequeue", "old", window=60)
    await asyncio.sleep(0.3)
    assert await store.windows.record("service_incidents", "ratequeue", "new", window=0.2) == 1


async def test_the_kill_switch_is_engaged_and_released_per_category(
    store: CoordinationStore,
) -> None:
    await store.flags.engage_kill_switch("failover", {"by": "ops"})
    await store.flags.engage_kill_switch("scaling", {"by": "ops"})
    await store.flags.release_kill_switch("scaling")
    assert await store.flags.kill_switches() == {"failover": {"by": "ops"}}
    await store.flags.release_every_kill_switch()
    assert await store.flags.kill_switches() == {}


async def test_shadow_mode_is_set_per_service(store: CoordinationStore) -> None:
    await store.flags.set_shadow("b", True)
    await store.flags.set_shadow("a", True)
    await store.flags.set_shadow("b", False)
    assert await store.flags.shadowed() == ["a"]
    await store.flags.clear_shadow()
    assert await store.flags.shadowed() == []


# -- sensors, the watch's marks, services, approvals -----------------------------------------------
async def test_a_sensor_keeps_its_last_heartbeat(store: CoordinationStore) -> None:
    await store.sensors.record_heartbeat(a_heartbeat("sensor-a"))
    last = a_heartbeat("sensor-a")
    await store.sensors.record_heartbeat(last)
    assert await store.sensors.heartbeat("sensor-a") == last
    assert [h.id for h in await store.sensors.heartbeats()] == [last.id]


async def test_a_heartbeat_older_than_the_retention_is_forgotten(store: CoordinationStore) -> None:
    # A replaced replica's sensor: its name is never heard again.
    gone = a_heartbeat("sensor-s0-replica-e3")
    long_ago = gone.occurred_at - timedelta(seconds=SENSOR_HEARTBEAT_RETENTION + 60)
    await store.sensors.record_heartbeat(gone.model_copy(update={"occurred_at": long_ago}))
    live = a_heartbeat("sensor-a")
    await store.sensors.record_heartbeat(live)
    assert [h.id for h in await store.sensors.heartbeats()] == [live.id]
    assert await store.sensors.heartbeat("sensor-s0-replica-e3") is None


async def test_a_report_is_filed_by_one_node(store: CoordinationStore) -> None:
    assert await store.watch.file_report("r", "n1", ttl=60)
    assert not await store.watch.file_report("r", "n2", ttl=60)
    assert await store.watch.report_filer("r") == "n1"
    await store.watch.withdraw_report("r")
    assert await store.watch.file_report("r", "n2", ttl=60)


async def test_ending_an_unwritable_episode_drops_its_flag_and_report(
    store: CoordinationStore,
) -> None:
    await store.watch.flag_unwritable("s0", "n1", ttl=60)
    await store.watch.file_report("r", "n1", ttl=60)
    assert await store.watch.unwritable_flagger("s0") == "n1"
    await store.watch.end_unwritable_episode("s0", "r")
    assert await store.watch.unwritable_flagger("s0") is None
    assert await store.watch.report_filer("r") is None


async def test_a_balancer_lists_its_hosts_and_those_held_for_forensics(
    store: CoordinationStore,
) -> None:
    await store.services.add("web", "http://h1", name="h1")
    await store.services.add("web", "http://h2", name="h2")
    assert await store.services.remove("web", "http://h1")
    await store.services.hold_for_forensics("web", "http://h1", "crashed")
    assert list(await store.services.members("web")) == ["http://h2"]
    assert (await store.services.forensics("web"))["http://h1"]["reason"] == "crashed"


async def test_an_approval_is_for_its_workflow_step(store: CoordinationStore) -> None:
    await store.approvals.approve("wf-1", "gate")
    assert await store.approvals.is_approved("wf-1", "gate")
    assert not await store.approvals.is_approved("wf-1", "other")


async def test_one_chaos_run_holds_the_run_lock(store: CoordinationStore) -> None:
    assert await store.run_lock.take("run-a", ttl=60) is None
    assert await store.run_lock.take("run-b", ttl=60) == "run-a"
    assert not await store.run_lock.renew("run-b", ttl=60)
    await store.run_lock.release("run-b")  # not run-b's to give back
    assert await store.run_lock.renew("run-a", ttl=60)
    await store.run_lock.release("run-a")
    assert await store.run_lock.take("run-b", ttl=60) is None


async def test_a_chaos_schedule_is_kept_by_name_until_replaced(store: CoordinationStore) -> None:
    assert await store.schedules.kept("nightly") is None
    await store.schedules.keep("nightly", '{"next_run": 1.0}')
    await store.schedules.keep("nightly", '{"next_run": 2.0}')
    await store.schedules.keep("hourly/a b", '{"next_run": 3.0}')
    assert await store.schedules.kept("nightly") == '{"next_run": 2.0}'
    assert await store.schedules.kept("hourly/a b") == '{"next_run": 3.0}'


# -- the topology ----------------------------------------------------------------------------------
async def test_the_first_topology_is_stored_on_epoch_zero(store: CoordinationStore) -> None:
    await store.topology.compare_and_set(0, a_topology(1))
    loaded = await store.topology.load()
    assert loaded is not None and loaded.epoch == 1


async def test_a_compare_and_set_on_a_stale_epoch_is_refused_and_changes_nothing(
    store: CoordinationStore,
) -> None:
    await store.topology.compare_and_set(0, a_topology(1))
    await store.topology.compare_and_set(1, a_topology(2, primary="q"))
    with pytest.raises(EpochConflict):
        await store.topology.compare_and_set(1, a_topology(2, primary="r"))
    loaded = await store.topology.load()
    assert loaded is not None and loaded.shards[0].primary.name == "q"


async def test_a_steps_reads_are_the_kill_switches_and_the_topology_as_stored(
    store: CoordinationStore,
) -> None:
    await store.topology.compare_and_set(0, a_topology(1))
    await store.flags.engage_kill_switch("failover", {"by": "ops"})

    reads = await store.step_reads()

    assert reads.kill_switches == await store.flags.kill_switches() == {"failover": {"by": "ops"}}
    assert reads.topology == await store.topology.load()


async def test_a_steps_reads_of_an_empty_store_are_no_switch_and_no_topology(
    store: CoordinationStore,
) -> None:
    reads = await store.step_reads()
    assert (reads.kill_switches, reads.topology) == ({}, None)


async def test_a_watch_delivers_a_new_epoch(store: CoordinationStore) -> None:
    await store.topology.compare_and_set(0, a_topology(1))
    watch = store.topology.watch(after_epoch=1, refresh_every=30)
    delivered = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.2)  # the watch is waiting: a reread alone could not deliver in time
    await store.topology.compare_and_set(1, a_topology(2, primary="q"))
    topology = await asyncio.wait_for(delivered, timeout=10)
    assert topology.epoch == 2 and topology.shards[0].primary.name == "q"
    await watch.aclose()  # type: ignore[attr-defined]


# -- the record log --------------------------------------------------------------------------------
async def test_audit_records_are_listed_newest_first(store: CoordinationStore) -> None:
    await store.records.save_audit("ev-1", '{"n": 1}', received_at=100)
    await store.records.save_audit("ev-2", '{"n": 2}', received_at=200)
    assert await store.records.newest_audits(since=None, count=10) == ['{"n": 2}', '{"n": 1}']
    assert await store.records.newest_audits(since=150, count=10) == ['{"n": 2}']
    assert await store.records.audit("ev-1") == '{"n": 1}'


async def test_shadow_decisions_keep_the_newest(store: CoordinationStore) -> None:
    for n in range(3):
        await store.records.append_shadow_decision({"n": n})
    assert await store.records.shadow_decisions(limit=2) == [{"n": 1}, {"n": 2}]


# -- retention (the Redis store: what weeks of scheduled runs leave) ------------------------------
@pytest.fixture
async def redis_store(redis_control: RedisProcess) -> AsyncIterator[CoordinationStore]:
    opened = open_coordination_store(
        StoreAddress(control_url=f"redis://{redis_control.host}:{redis_control.port}/0")
    )
    await opened.control.flushall()  # type: ignore[attr-defined]
    yield opened
    await opened.aclose()


async def test_a_finished_workflow_expires_after_the_retention(
    redis_store: CoordinationStore,
) -> None:
    control = redis_store.control  # type: ignore[attr-defined]
    await redis_store.workflows.save(a_workflow("wf-1"), {"step": "a"}, owner=None)
    assert await control.pttl("lz:wf:wf-1") == -1  # running: kept
    await redis_store.workflows.save(a_workflow("wf-1", status="succeeded"), {"step": "b"},
                                     owner=None)  # fmt: skip
    retention_ms = WORKFLOW_RETENTION_SECONDS * 1000
    for key in ("lz:wf:wf-1", "lz:wf:wf-1:history"):
        assert retention_ms - 60_000 < await control.pttl(key) <= retention_ms


async def test_the_audit_index_keeps_only_what_the_retention_keeps(
    redis_store: CoordinationStore,
) -> None:
    await redis_store.records.save_audit("ev-old", '{"n": 1}', received_at=100)
    later = 100 + AUDIT_RETENTION_SECONDS + 1
    await redis_store.records.save_audit("ev-new", '{"n": 2}', received_at=later)
    control = redis_store.control  # type: ignore[attr-defined]
    assert await control.zrange("lz:audit:index", 0, -1) == [b"ev-new"]


async def test_a_finished_workflow_expires_after_the_retention_on_etcd(
    etcd: EtcdCluster, redis_control: RedisProcess
) -> None:
    opened = open_coordination_store(
        StoreAddress(control_url=f"redis://{redis_control.host}:{redis_control.port}/0",
                     coordination_backend="etcd", etcd_endpoints=",".join(etcd.endpoints))
    )  # fmt: skip
    client = opened.client  # type: ignore[attr-defined]
    try:
        await client.delete("/", prefix=True)
        await opened.workflows.save(a_workflow("wf-1"), {"step": "a"}, owner=None)
        await opened.workflows.save(a_workflow("wf-1"), {"step": "b"}, owner=None)
        kept = await client.get_prefix("/")
        assert kept.kvs and all(kv.lease == 0 for kv in kept.kvs)  # running: kept
        await opened.workflows.save(a_workflow("wf-1", status="succeeded"), {"step": "c"},
                                    owner=None)  # fmt: skip
        finished = [kv for kv in (await client.get_prefix("/")).kvs if "wf-1" in kv.key]
        assert len(finished) == 4  # the record and three history entries
        [lease] = {kv.lease for kv in finished}
        assert await client.lease_ttl(lease) >= WORKFLOW_RETENTION_SECONDS
        assert await opened.workflows.history("wf-1") == [
            {"at": pytest.approx(time.time(), abs=60), "step": s} for s in "abc"
        ]
    finally:
        await opened.aclose()
